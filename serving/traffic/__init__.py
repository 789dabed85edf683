"""Champion vs challenger on live traffic: the traffic policy, shadow calls and the online comparison.

``policy`` (the per-ensemble settings), ``routing`` (where one request goes), ``shadow`` (bounded
fire-and-forget calls), ``figures`` (how two answers differ, pure numpy), ``comparison`` (the
sliding window of paired answers), ``summary`` (its JSON document), ``metrics`` (its Prometheus
series), ``reload`` (the policy re-read from the config file) and ``controller`` (the one object the
serving core calls).
"""
