"""The report's documents: its sections (titles, paragraphs, tables, figure entries,
samples, links) built once from an Analysis, then written as HTML (figures embedded, one
file to mail) and as Markdown; and the summary ``python -m analysis`` prints.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import aggregate, export, settings, verdicts
from analysis.aggregate import CONFIG_KEYS
from analysis.export import slug
from analysis.figures import FigureJob, figure_entries
from analysis.search_report import search_section
from sweeps.schema import read_runs

if TYPE_CHECKING:
    from analysis.report import Analysis, Report


@dataclass
class Section:
    """One section of the report as data: render_html and render_markdown write the same."""

    title: str
    level: int = 2
    anchor: str = ""  # the HTML section's id
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, list[str]]] = field(default_factory=list)  # caption, img, links
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # title, text, note
    links: list[tuple[str, str]] = field(default_factory=list)  # label, relative path


def missing_notes(analysis: Analysis) -> list[str]:
    """What the report cannot show, each as a sentence."""
    store = analysis.store
    ablation = store.trials[store.trials["kind"].ne("search")]
    notes = _progress_notes(analysis) + _baseline_notes(analysis.levels, ablation)
    single = analysis.summary[analysis.summary["best_val_loss_n"].eq(1)]
    if len(single):
        notes.append(
            f"{len(single)} config(s) have a single finished seed: no standard error or test."
        )
    if store.attention.empty and not ablation.empty:  # attention is read for baselines only
        notes.append(
            "No attention rows for the sweeps' baselines: attention figures (4, 5) are skipped."
        )
    if store.samples.empty and not store.trials.empty:
        notes.append("No samples in the store: the samples section is empty.")
    dropped = {table: n for table, n in store.duplicates.items() if n}
    if dropped:
        notes.append(
            "Duplicate rows dropped (newest kept): "
            + ", ".join(f"{n} in {table}" for table, n in dropped.items())
            + "."
        )
    return notes + analysis.verdicts.attrs.get("notes", [])


def _progress_notes(analysis: Analysis) -> list[str]:
    """Trials the statistics leave out: unfinished, in progress, failed, corrupt files."""
    store, notes = analysis.store, []
    if store.trials.empty:
        notes.append("The store has no trials rows yet: no tables or figures of results.")
    for sweep, levels in analysis.levels.groupby("sweep", sort=True):
        unfinished = levels[levels["state"].ne("finished")]
        if len(unfinished):
            notes.append(
                f"Sweep {sweep}: {settings.trial_counts(levels)}. The tables and figures show "
                f"finished trials only; {len(unfinished)} of {len(levels)} planned levels are "
                "not finished (each level's state: the planned grid in 'How the runs were set "
                "up')."
            )
    if store.in_progress:
        notes.append(
            f"{len(store.in_progress)} trial(s) in progress (curves written, no trials row "
            "yet) are not in the statistics."
        )
    unfinished = int(analysis.summary["n_unfinished"].sum()) if len(analysis.summary) else 0
    if unfinished:
        notes.append(f"{unfinished} trial(s) with a status other than ok/failed are left out.")
    if store.corrupt:
        notes.append(f"{len(store.corrupt)} corrupt store file(s) were skipped (listed below).")
    if len(analysis.failed):
        diverged = int(analysis.failed["diverged"].sum())
        notes.append(
            f"{len(analysis.failed)} failed trial(s) ({diverged} diverged) are left out of "
            "the statistics (listed below)."
        )
    return notes


def _baseline_notes(levels: pd.DataFrame, ablation: pd.DataFrame) -> list[str]:
    """Per ablation sweep and dataset without a finished baseline: no comparisons."""
    planned = set()
    if len(levels):
        baselines = levels.loc[levels["factor"].eq("baseline"), ["sweep", "dataset"]]
        planned = set(baselines.itertuples(index=False, name=None))
    notes = []
    for (sweep, dataset), rows in ablation.groupby(["sweep", "dataset"]):
        baseline = rows["factor"].eq("baseline")
        if not baseline.any() and (sweep, dataset) in planned:
            notes.append(
                f"Sweep {sweep} ({dataset}): no baseline trial has finished yet: no "
                "comparisons until one does."
            )
        elif not baseline.any():
            notes.append(f"Sweep {sweep} ({dataset}) has no baseline trials: no comparisons.")
        elif not (baseline & rows["status"].eq("ok")).any():
            notes.append(f"Sweep {sweep} ({dataset}): no baseline trial finished: no comparisons.")
    return notes


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ranking_table(ranking: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Rank": ranking["rank"],
            "Factor": ranking["factor"],
            "Effect on val loss (max |Δ|)": [_fmt(v) for v in ranking["effect"]],
            "Bootstrap 95% CI": [
                "–" if pd.isna(lo) else f"[{lo:.4f}, {hi:.4f}]"
                for lo, hi in zip(ranking["effect_ci_low"], ranking["effect_ci_high"], strict=True)
            ],
            "Bootstrap stderr": [_fmt(v) for v in ranking["effect_stderr"]],
            "Best level": ranking["best_level"],
            "Δ of best level": [_fmt(v) for v in ranking["best_delta"]],
        }
    )


def build_sections(
    analysis: Analysis,
    jobs: list[FigureJob],
    formats: Sequence[str],
    missing: list[str],
    tables: list[Path],
    temp: Path,
    metric: str,
) -> list[Section]:
    """The report's sections in order; ``jobs``: every figure drawn (their entries go to
    the section of their sweep, or of their kind), ``tables``: the table files written
    under ``temp`` (the report being built)."""
    figures: dict[str, list[tuple[str, str, list[str]]]] = {}
    for job in sorted(jobs, key=lambda job: job.stem):
        entries = figure_entries(job.stem, job.caption, formats, job.views)
        figures.setdefault(job.stem.split("/")[0], []).extend(entries)
    sections = [_setup_section(analysis), _overview_section(analysis, missing)]
    sentence = _unresolved_sentence(analysis)
    if sentence:
        sections[0].paragraphs.insert(0, sentence)
    summary = analysis.summary
    for sweep, rows in summary[summary["kind"].ne("search")].groupby("sweep", sort=True):
        sections.append(_sweep_section(analysis, sweep, rows, metric))
        sections[-1].figures += figures.get(slug(sweep), [])
    if "7_sweeps_compared" in figures:
        sections.append(Section("Sweeps compared", figures=figures["7_sweeps_compared"]))
    if len(analysis.leaderboard):
        sections.append(Section(**search_section(analysis.store.trials, temp / "figures", formats)))
    heat = Section("Attention heatmaps", figures=figures.get("6_heatmaps", []))
    if not heat.figures:
        heat.paragraphs.append("No heatmaps: see 'What is missing' in the overview.")
    failed = analysis.failed[["trial_id", "sweep", "dataset", "config", "seed", "error"]]
    corrupt = analysis.store.corrupt
    files = pd.DataFrame({"File": [str(p) for p, _ in corrupt], "Reason": [r for _, r in corrupt]})
    links = [(str(p.relative_to(temp)), str(p.relative_to(temp))) for p in tables]
    exported = (
        "Tables as CSV, Markdown and LaTeX (paste into a paper), and final_info.json per "
        "config in the research templates' format."
    )
    return [
        *sections,
        heat,
        _samples_section(analysis),
        _listing("Failed trials", ("Left out of the statistics", failed.fillna("–"))),
        _listing(
            "Corrupt store files", ("", files), "These files could not be read and were skipped:"
        ),
        Section("Exported files", paragraphs=[exported], links=links),
    ]


def _listing(title: str, table: tuple[str, pd.DataFrame], intro: str | None = None) -> Section:
    """A section of one table (after ``intro``), or 'None.' when the table is empty."""
    if table[1].empty:
        return Section(title, paragraphs=["None."])
    return Section(title, paragraphs=[intro] if intro else [], tables=[table])


def _overview_section(analysis: Analysis, missing: list[str]) -> Section:
    """Trial counts in one table, then what is missing or left out."""
    store, trials = analysis.store, analysis.store.trials
    counts = pd.DataFrame(
        {
            "Trials": [len(trials)],
            "Planned": [int(analysis.levels["planned"].sum()) if len(analysis.levels) else "–"],
            "Finished (ok)": [int(trials["status"].eq("ok").sum())],
            "Failed": [int(trials["status"].eq("failed").sum())],
            "Diverged": [int(analysis.failed["diverged"].sum()) if len(analysis.failed) else 0],
            "In progress": [len(store.in_progress)],
            "Corrupt files": [len(store.corrupt)],
            "Sweeps": [", ".join(sorted(trials["sweep"].dropna().unique())) or "–"],
            "Datasets": [", ".join(sorted(trials["dataset"].dropna().unique())) or "–"],
        }
    )
    overview = Section("Overview", anchor="overview", tables=[("", counts)])
    if missing:
        overview.paragraphs.append("What is missing or left out:")
        overview.paragraphs += [f"• {note}" for note in missing]
    return overview


def _sweep_section(analysis: Analysis, sweep: str, rows: pd.DataFrame, metric: str) -> Section:
    """An ablation sweep's table (with its verdicts) and factor ranking per dataset."""
    section = Section(f"Sweep {sweep}")
    section.paragraphs.append(
        "Mean ± standard error over seeds. " + verdicts.caption(analysis.verdicts, sweep)
    )
    section.tables.append(("", export.paper_table(rows, analysis.verdicts, metric)))
    section.tables += verdicts.report_tables(analysis.verdicts, sweep)
    ranking = analysis.ranking[analysis.ranking["sweep"] == sweep]
    for dataset, part in ranking.groupby("dataset", sort=True):
        caption = f"Factor ranking ({dataset}): how much each factor moves {metric}, seed-averaged"
        section.tables.append((caption, _ranking_table(part)))
    return section


def _unresolved_sentence(analysis: Analysis) -> str | None:
    """verdicts.unresolved_sentence with the command the sweep's last run recorded."""
    rows = analysis.verdicts
    if rows.empty or not rows["verdict"].eq("unresolved").any():
        return None
    sweep = rows.loc[rows["verdict"].eq("unresolved"), "sweep"].iloc[0]
    runs = [r for r in read_runs(analysis.store.root) if r.get("sweep") == sweep]
    command = str(runs[-1]["command"]) if runs and runs[-1].get("command") else None
    return verdicts.unresolved_sentence(rows[rows["sweep"] == sweep], command)


def _setup_section(analysis: Analysis) -> Section:
    """How the runs were set up, per sweep (analysis.settings): the report's first section."""
    section = Section("How the runs were set up", anchor="setup")
    trials = analysis.store.trials
    if trials.empty and analysis.store.planned.empty:
        section.paragraphs.append("No trials in the store yet.")
        return section
    runs = read_runs(analysis.store.root)
    planned, levels = analysis.store.planned, analysis.levels
    for sweep in sorted({*trials["sweep"].dropna(), *planned.get("sweep", [])}):
        table = settings.setup_table(trials, runs, sweep, planned, levels)
        section.tables.append((f"Sweep {sweep}", table))
        if len(levels) and levels["sweep"].eq(sweep).any():
            counts = settings.trial_counts(levels[levels["sweep"].eq(sweep)])
            grid = settings.planned_grid_table(levels, sweep)
            section.tables.append((f"Sweep {sweep}: planned grid, {counts}", grid))
    return section


def _samples_section(analysis: Analysis) -> Section:
    """One generated sample per config (its lowest seed), side by side."""
    section = Section("Generated samples")
    samples = analysis.store.samples
    if samples.empty:
        section.paragraphs.append("No samples in the store.")
        return section
    trials = analysis.store.trials
    ok = trials[trials["status"].eq("ok")].sort_values("seed")
    first = ok.drop_duplicates(CONFIG_KEYS)[[*CONFIG_KEYS, "trial_id", "seed"]]
    texts = samples.assign(trial_id=samples["trial_id"].astype(str)).drop_duplicates("trial_id")
    merged = aggregate._sort_configs(first.merge(texts, on="trial_id"))
    for _, row in merged.head(200).iterrows():
        label = aggregate.config_label(row["factor"], row["level"])
        title = f"{row['sweep']} / {row['dataset']} / {label}"
        note = (
            f"seed {row['seed']}; distinct-2 {_fmt(row['distinct_2'], 2)}, repetition "
            f"{_fmt(row['repetition_rate'], 2)}, known words {_fmt(row['known_word_share'], 2)}"
        )
        section.samples.append((title, str(row["text"]), note))
    if len(merged) > 200:
        section.paragraphs.append(f"First 200 of {len(merged)} configs shown.")
    return section


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1240px;padding:0 1em;color:#222}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3} td:first-child,td:nth-child(2){text-align:left}
#setup td:nth-child(2){max-width:60em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:.8em}
.sample{border:1px solid #ddd;padding:.5em;font-size:.8em}
.sample pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#fafafa;margin:.4em 0}
"""


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(False)
    )
    return (
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        "</table></div>"
    )


def _embedded(path: Path) -> str:
    """A figure file as a data: URI, so the page shows it without the file beside it."""
    kind = {"png": "image/png", "svg": "image/svg+xml"}.get(path.suffix[1:])
    if kind is None or not path.is_file():
        return path.name
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(sections: list[Section], analysis: Analysis, root: Path) -> str:
    """The page; figures are read from ``root`` (the report directory) and embedded."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>charlm sweeps report: {e(analysis.store.root.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sweep report: {e(analysis.store.root.name)}</h1>",
        f"<p>Store {e(str(analysis.store.root))}, read {time.strftime('%Y-%m-%d %H:%M')}.</p>",
    ]
    for section in sections:
        parts.append(f"<section id='{e(section.anchor or slug(section.title))}'>")
        parts.append(f"<h{section.level}>{e(section.title)}</h{section.level}>")
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        for caption, frame in section.tables:
            if caption:
                parts.append(f"<h4>{e(caption)}</h4>")
            parts.append(_html_table(frame))
        for caption, image, links in section.figures:
            others = " ".join(
                f"<a href='{e(link)}'>{e(link.rsplit('.', 1)[1])}</a>" for link in links
            )
            parts.append(
                f"<figure><img src='{e(_embedded(root / image))}' alt='{e(caption)}'>"
                f"<figcaption>{e(caption)} (files: {others})</figcaption></figure>"
            )
        if section.samples:
            parts.append("<div class='samples'>")
            for title, text, note in section.samples:
                parts.append(
                    f"<div class='sample'><b>{e(title)}</b><pre>{e(text)}</pre>{e(note)}</div>"
                )
            parts.append("</div>")
        if section.links:
            parts.append(
                "<ul>"
                + "".join(f"<li><a href='{e(p)}'>{e(label)}</a></li>" for label, p in section.links)
                + "</ul>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(sections: list[Section], analysis: Analysis) -> str:
    parts = [f"# Sweep report: {analysis.store.root.name}", ""]
    for section in sections:
        parts += ["#" * section.level + f" {section.title}", ""]
        parts += [p + "\n" for p in section.paragraphs]
        for caption, frame in section.tables:
            if caption:
                parts += [f"**{caption}**", ""]
            parts.append(export.to_markdown(frame.astype(str)))
        for caption, image, links in section.figures:
            others = ", ".join(f"[{link.rsplit('.', 1)[1]}]({link})" for link in links)
            parts += [f"![{caption}]({image})", f"*{caption}* ({others})", ""]
        if section.samples:
            rows = pd.DataFrame(
                [(title, text.replace("\n", " ⏎ "), note) for title, text, note in section.samples],
                columns=["Config", "Sample", "Metrics"],
            )
            parts.append(export.to_markdown(rows))
        parts += [f"- [{label}]({p})" for label, p in section.links]
        parts.append("")
    return "\n".join(parts)


def print_summary(report: Report, metric: str) -> None:
    """What ``python -m analysis`` prints: trial counts, each sweep's table, notes, files."""
    analysis = report.analysis
    trials = analysis.store.trials
    print(
        f"{len(trials)} trials: {int(trials['status'].eq('ok').sum())} ok, "
        f"{int(trials['status'].eq('failed').sum())} failed, "
        f"{len(analysis.store.in_progress)} in progress, "
        f"{len(analysis.store.corrupt)} corrupt files"
    )
    summary = analysis.summary[analysis.summary["kind"].ne("search")]
    for sweep, rows in summary.groupby("sweep", sort=True):
        table = export.paper_table(rows, analysis.verdicts, metric)
        keep = [c for c in table.columns if c not in ("Final train loss", "Final val loss")]
        print(f"\nsweep {sweep}")
        print(export.to_markdown(table[keep]), end="")
        print(verdicts.caption(analysis.verdicts, sweep))
    print("", *verdicts.summary_lines(analysis.verdicts), sep="\n")
    sentence = _unresolved_sentence(analysis)
    if sentence:
        print(sentence)
    for note in report.missing:
        print(f"note: {note}")
    figures = len(report.figures)
    print(f"\n{figures} figure files, {len(report.tables)} table files in {report.out_dir}")
