"""Which served manifest a request addresses: TF Serving's name, version and label rules.

A request names the ensemble and optionally a version or a label; :func:`resolve` answers the
manifest that serves it from a :class:`ServedManifests` snapshot, or TF Serving's NOT_FOUND
message. Nothing here depends on what the manifests' members are doing.
"""

from __future__ import annotations

from contracts.manifest import Manifest
from serving.core import ModelRef
from serving.errors import InvalidArgument, NotFound, Unavailable
from serving.manifest_source import ServedManifests, served_version

NO_MANIFEST = (
    "no ensemble manifest loaded yet: the manifest source has not answered since the gateway started"
)


def resolve(served: ServedManifests | None, ref: ModelRef) -> Manifest:
    """The manifest ``ref`` addresses: by label, by version, else the default one.

    Raises Unavailable before the first manifest, and NotFound for another name, an unknown label
    or an unknown version.
    """
    if served is None:
        raise Unavailable(NO_MANIFEST)
    if ref.name != served.name:
        raise NotFound(f"Servable not found for request: Latest({ref.name})")
    if ref.label:
        manifest = served.labels.get(ref.label)
        if manifest is None:
            known = ", ".join(sorted(served.labels)) or "none"
            raise NotFound(f"Unrecognized servable version label: {ref.label} (labels served: {known})")
        return manifest
    if ref.version is not None:
        for manifest in every_manifest(served):
            if served_version(manifest) == ref.version:
                return manifest
        raise NotFound(f"Servable not found for request: Specific({ref.name}, {ref.version})")
    return served.default


def check_signature(manifest: Manifest, ref: ModelRef) -> None:
    """InvalidArgument when a predict names a signature the manifest does not serve."""
    if ref.signature_name and ref.signature_name != manifest.signature_name:
        raise InvalidArgument(f'Serving signature name: "{ref.signature_name}" not found in signature def')


def every_manifest(served: ServedManifests) -> list[Manifest]:
    """Each served manifest once (by version), the default one first."""
    seen: dict[int, Manifest] = {served_version(served.default): served.default}
    for manifest in served.labels.values():
        seen.setdefault(served_version(manifest), manifest)
    return list(seen.values())
