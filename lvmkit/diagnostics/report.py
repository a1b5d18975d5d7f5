"""A report: tables of figures with a one-line reading each, pictures, and the numbers as JSON.
``Report.save`` writes a self-contained HTML page (every picture embedded as a data URI, so the
page is one file that opens anywhere), the pictures, ``diagnostics.json`` and ``posterior.nc``."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lvmkit.core.files import write_text
from lvmkit.diagnostics.plots import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Section:
    """One table of a Report.

    Parameters
    ----------
    heading : str
    rows : list of (str, object, str)
        Name, value, and a one-line reading.
    note : str
        What the table is, under it.
    """

    heading: str
    rows: list[tuple[str, object, str]]  # (figure, value, reading)
    note: str = ""


@dataclass
class Report:
    """What ``diagnose`` found: ``sections`` for people, ``results`` (JSON-able) for programs.

    Parameters
    ----------
    title : str
    sections : list of Section
    figures : dict of str to Figure or Path
        Pictures by file name.
    results : dict
        The numbers, JSON-able.
    posterior : arviz.InferenceData, optional
    """

    title: str
    sections: list[Section] = field(default_factory=list)
    figures: dict[str, Figure | Path] = field(default_factory=dict)  # file name -> picture
    results: dict = field(default_factory=dict)
    posterior: object | None = None  # arviz.InferenceData of q(z|x), when there is one

    def save(self, folder: str | Path) -> Path:
        """Write report.html, diagnostics.json, posterior.nc and each new picture into
        ``folder``; returns the report's path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pictures = [
            Path(fig) if isinstance(fig, (str, Path)) else save_figure(fig, folder / name)
            for name, fig in self.figures.items()
        ]
        if self.posterior is not None:
            self.posterior.to_netcdf(folder / "posterior.nc")
        write_text(folder / "diagnostics.json", json.dumps(self.results, indent=2) + "\n")
        return write_text(folder / "report.html", self.html(pictures))

    def html(self, pictures: list[Path]) -> str:
        """The page, with the PNG files ``pictures`` embedded."""
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
            "figure{display:inline-block;margin:.5em}img{max-width:28em}</style>",
            f"</head><body><h1>{html.escape(self.title)}</h1>",
        ]
        for section in self.sections:
            parts.append(f"<h2>{html.escape(section.heading)}</h2>")
            if section.note:
                parts.append(f"<p>{html.escape(section.note)}</p>")
            parts.append("<table><tr><th>figure</th><th>value</th><th>reading</th></tr>")
            for name, value, reading in section.rows:
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                parts.append(
                    f"<tr><td>{html.escape(name)}</td><td>{html.escape(shown)}</td>"
                    f"<td>{html.escape(reading)}</td></tr>"
                )
            parts.append("</table>")
        parts.append("<h2>Pictures</h2>")
        parts += [_embedded(p) for p in pictures]
        parts.append("</body></html>")
        return "\n".join(parts)


def _embedded(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name}</figcaption></figure>"
    )
