"""A self-contained HTML report: tables of figures with a one-line reading each, and every
picture embedded as a data URI, so the page is one file that opens anywhere."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(Path(path).name)
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def write_report(
    path: str | Path, title: str, sections: list[tuple[str, list, str]], images: list[Path]
) -> Path:
    """sections: (heading, rows of (name, value, reading), note); images: PNG files to embed."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "figure{display:inline-block;margin:.5em}img{max-width:28em}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, rows, note in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
        parts.append("<table><tr><th>figure</th><th>value</th><th>reading</th></tr>")
        for name, value, reading in rows:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(shown)}</td>"
                f"<td>{html.escape(reading)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Pictures</h2>")
    parts += [_image(p) for p in images]
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))
    return Path(path)
