"""Turn a bundle directory into a PolicyBundle manifest: ``python -m cmcp_operator.render_bundle DIR``.

The files go inline under ``spec.files`` keyed by their POSIX path, exactly the set the
bundle hash covers (manifest.json, schema.cedarschema, catalog.json, ``*.cedar``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from cmcp_core.bundle import read_bundle_files
from cmcp_operator.constants import API_VERSION, BUNDLE_KIND


def bundle_manifest(directory: Path | str, name: str, namespace: str | None = None,
                    **spec_extra: Any) -> dict[str, Any]:
    files = read_bundle_files(Path(directory))
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": BUNDLE_KIND, "metadata": meta,
            "spec": {"files": files, **spec_extra}}


class _Literal(str):
    """Multi-line strings as YAML block literals, so policies stay readable in the manifest."""


def _literal(dumper: yaml.SafeDumper, data: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


def dump(doc: dict[str, Any]) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Literal, _literal)
    files = doc["spec"]["files"]
    # Block literals cannot carry trailing spaces or CR faithfully; fall back to quoted strings.
    doc["spec"]["files"] = {k: _Literal(v) if "\r" not in v and " \n" not in v and not v.endswith(" ")
                            else v for k, v in files.items()}
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cmcp_operator.render_bundle", description=__doc__)
    p.add_argument("directory")
    p.add_argument("--name", help="metadata.name (default: the directory name)")
    p.add_argument("--namespace", "-n")
    a = p.parse_args(argv)
    name = a.name or Path(a.directory).resolve().name.replace("_", "-").lower()
    sys.stdout.write(dump(bundle_manifest(a.directory, name, a.namespace)))


if __name__ == "__main__":
    main()
