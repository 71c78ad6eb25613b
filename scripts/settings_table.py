"""Print the README's settings tables from the settings classes themselves (so they cannot drift)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from p2p_sidecar.settings import SidecarSettings


def table(cls: type[BaseSettings], prefix: str) -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        if field.default_factory is not None:
            default = (
                "(see meaning)"
                if name == "data_dir"
                else repr(field.get_default(call_default_factory=True, validated_data={}))
            )
        else:
            default = repr(field.default)
        default = default.replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def tables() -> str:
    return (
        "Gateway (`python -m gateway`):\n\n"
        + table(GatewaySettings, "GATEWAY_")
        + "\n\nSidecar (`python -m p2p_sidecar`):\n\n"
        + table(SidecarSettings, "SIDECAR_")
    )


def readme_section(readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip()


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        path = Path(__file__).resolve().parent.parent / "README.md"
        text = path.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        path.write_text(text[:start] + "\n" + tables() + "\n" + text[end:])
    else:
        print(tables())
