"""`capfilt inspect OUT`: what a run decided, from its markers, its files' footers and a few columns.

Counts come from the shard markers (no data read), score quantiles and thresholds from the sketches in
each committed file's footer (pipeline.review.sketch), keep fractions from the `status`/`keep` columns only,
throughput, stage times and provenance from `run.json` and `runs/`. Works on the output of every job.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dedup.run import DEDUP, SUMMARY, done_parts
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import committed_shards
from pipeline.review.sketch import SKETCHED, Merged, file_metadata, table_sketches
from pipeline.runner.report import RUNS
from pipeline.schema import (
    AESTHETIC_SCORE,
    CAPTION_SCORES,
    EMBEDDINGS,
    HEAD_SCORES,
    KEEP,
    KEEP_TEXT,
    KEY,
    NSFW_SCORE,
    OK,
    SCORE_COLUMNS,
    SOURCE,
    STATUS,
    TEXT_SCORE,
)

TABLES = ("captions", "embeddings")
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
KEEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
# The curation heads: how each keeps (aesthetic ≥ its threshold, NSFW < its), and the config field
HEAD_RULES = {AESTHETIC_SCORE: (">=", "aesthetic_min"), NSFW_SCORE: ("<", "nsfw_max")}


class InspectError(ValueError):
    """OUT is not the output of a capfilt run: the message says what is missing."""


def _json(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None


def _stats(m: Merged) -> dict[str, Any]:
    return {"n": m.n, "quantiles": {f"p{round(q * 100)}": m.quantile(q) for q in QUANTILES},
            "error_rows": m.error_rows}


def inspect_output(output: str, options: dict[str, Any] | None = None, keep: float | None = None) -> dict[str, Any]:
    """Everything `inspect` prints, as a dict (`--json` prints it as it is)."""
    options = options or {}
    fs, root = get_fs(output, options)
    run = _json(fs, join(root, "run.json"))
    markers = committed_shards(output, options)
    if run is None and not markers:
        raise InspectError(f"inspect: {output!r} holds no run.json and no committed shards: not a capfilt output")
    counts: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    for m in markers.values():
        counts.update(m.get("counts", {}))
        flags.update(m.get("caption_flags", {}))
    rows = sum(counts.values())
    out: dict[str, Any] = {"output": output, "job": (run or {}).get("job"), "shards_committed": len(markers),
                           "rows": rows, "counts": dict(sorted(counts.items())),
                           "ok_fraction": counts.get(OK, 0) / rows if rows else None}
    if any("caption_flags" in m for m in markers.values()):
        out["caption_flags"] = dict(sorted(flags.items()))  # candidates with each flag (models/flags.py)
    names = sorted(m["name"] for m in markers.values())
    sketches: dict[str, list[dict[str, Any]]] = {}
    columns: dict[str, list[str]] = {}
    keep_counts: Counter[str] = Counter()
    for table in TABLES:
        for n in names:
            try:
                fh = fs.open(join(root, table, f"{n}.parquet"), "rb")
            except FileNotFoundError:  # a job without this table
                continue
            with fh:
                pf = pq.ParquetFile(fh)
                schema = pf.schema_arrow
                columns.setdefault(table, schema.names)
                meta = file_metadata(schema)
                scored = [c for c in SKETCHED if c in schema.names]
                if scored and (meta is None or not all(c in meta.get("sketches", {}) for c in scored)):
                    meta = {"sketches": table_sketches(pf.read(columns=scored))}  # written before sketches
                for c, s in (meta or {}).get("sketches", {}).items():
                    sketches.setdefault(c, []).append(s)
                if KEEP in schema.names:  # keep_text: clean's alone (embed's curation thresholds keep rows only)
                    t = pf.read(columns=[c for c in (STATUS, KEEP, KEEP_TEXT) if c in schema.names])
                    ok = pc.equal(t[STATUS], OK)
                    keep_counts["ok"] += int(pc.sum(ok).as_py() or 0)
                    keep_counts["keep"] += int(pc.sum(pc.fill_null(t[KEEP], False)).as_py() or 0)
                    if KEEP_TEXT in t.column_names:
                        keep_counts["keep_text"] += int(pc.sum(pc.fill_null(t[KEEP_TEXT], False)).as_py() or 0)
                        keep_counts["with_keep_text"] += 1
    out["tables"] = {t: {"columns": c, "embeddings": [e for e in EMBEDDINGS if e in c]} for t, c in columns.items()}
    if keep_counts["ok"]:
        out["keep"] = {"rows": keep_counts["keep"], "fraction": keep_counts["keep"] / keep_counts["ok"],
                       "of_ok_rows": keep_counts["ok"]}
        if keep_counts["with_keep_text"]:
            out["keep"].update({"alt_text_rows": keep_counts["keep_text"],
                                "alt_text_fraction": keep_counts["keep_text"] / keep_counts["ok"]})
    merged = {c: Merged.of(s) for c, s in sketches.items()}
    cfg = (run or {}).get("config", {})
    rank_by = cfg.get("clean", {}).get("rank_by")
    scorers: dict[str, Any] = {}
    for kind, (text_col, caps_col) in SCORE_COLUMNS.items():
        if text_col in merged or caps_col in merged:
            scorers[kind] = {"alt_text": _stats(merged[text_col]) if text_col in merged else None,
                             "captions": _stats(merged[caps_col]) if caps_col in merged else None}
    if scorers:
        out["scores"] = scorers
    if TEXT_SCORE in merged and merged[TEXT_SCORE].n:
        alt = merged[TEXT_SCORE]
        out["ranked_by"] = rank_by
        out["thresholds"] = [_threshold(alt, f) for f in KEEP_FRACTIONS]
        threshold = thresholds(cfg).get(rank_by or "")
        if threshold is not None:
            out["configured_threshold"] = {"threshold": threshold, "alt_texts_kept": alt.at_least(threshold),
                                           "of": alt.n, "error_rows": alt.error_rows}
        if keep is not None:
            out["keep_request"] = _threshold(alt, keep)
        if CAPTION_SCORES in merged:
            out["candidates_scored"] = merged[CAPTION_SCORES].n
    elif keep is not None:
        raise InspectError(f"inspect: --keep needs alt-text scores ({TEXT_SCORE}); {output!r} has none "
                           f"(job {out['job']!r}: only `capfilt clean` scores alt-text)")
    curation = {c: _head(merged[c], c, (cfg.get("curate") or {}).get(HEAD_RULES[c][1]))
                for c in HEAD_SCORES if c in merged and merged[c].n}
    if curation:
        out["curation"] = curation
    dedup = dedup_summary(output, options)
    if dedup is not None:
        out["dedup"] = dedup
    if run is not None:
        out["run"] = {k: run.get(k) for k in ("run_id", "job", "inputs", "seconds", "images_per_s",
                                              "steady_images_per_s", "first_block_s", "stages", "models",
                                              "revisions", "versions", "config_digest", "totals")}
        out["run"]["dtypes"] = {s: v.get("dtype") for s, v in cfg.items() if isinstance(v, dict) and "dtype" in v}
    out["runs"] = _runs(fs, root)
    return out


def thresholds(cfg: dict[str, Any]) -> dict[str, float]:
    """The clean job's thresholds per scorer (`clean.itm_threshold`, ...), when it kept by threshold."""
    clean = cfg.get("clean") or {}
    if clean.get("mode", "threshold") != "threshold":
        return {}
    return {k: float(clean[f"{k}_threshold"]) for k in SCORE_COLUMNS if clean.get(f"{k}_threshold") is not None}


def _threshold(m: Merged, keep: float) -> dict[str, Any]:
    t = m.threshold_for(keep)
    return {"keep_fraction": keep, "threshold": t, "alt_texts_kept": m.at_least(t) if t is not None else 0,
            "of": m.n, "error_rows": m.error_rows}


def _head(m: Merged, column: str, configured: float | None) -> dict[str, Any]:
    """A curation head's quantiles, what its configured threshold keeps and the thresholds that keep
    each of KEEP_FRACTIONS (≥ for the aesthetic score, < for NSFW)."""
    rule = HEAD_RULES[column][0]

    def kept(t: float | None) -> float:
        return 0.0 if t is None else m.at_least(t) if rule == ">=" else m.below(t)

    out: dict[str, Any] = {**_stats(m), "rule": rule, "field": f"curate.{HEAD_RULES[column][1]}"}
    if configured is not None:
        out["configured"] = {"threshold": configured, "kept": kept(configured), "of": m.n}
    out["thresholds"] = [{"keep_fraction": f, "threshold": t, "kept": kept(t), "of": m.n}
                         for f in KEEP_FRACTIONS
                         for t in [m.threshold_for(f) if rule == ">=" else m.threshold_below(f)]]
    return out


def dedup_summary(output: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """What `capfilt dedup` decided for OUT (OUT/dedup/_dedup.json), with the final kept count from its
    parts' markers (those of the same dedup settings), or None where dedup has not run."""
    fs, root = get_fs(output, options)
    summary = _json(fs, join(root, DEDUP, SUMMARY))
    if summary is None:
        return None
    parts = list(done_parts(output, options, summary.get("config_digest") or "").values())
    return {"rows": sum(p["rows"] for p in parts), "parts": len(parts), "files": summary.get("files"),
            "duplicates": summary.get("duplicates", {}), "kept": sum(p["kept"] for p in parts),
            "run_kept": summary.get("run_kept"), "ok": summary.get("ok"), "semantic": summary.get("semantic"),
            "clusters": summary.get("clusters"), "seconds": summary.get("seconds"),
            "config": summary.get("config"), "groups": duplicate_groups(output, options)}


def duplicate_groups(output: str, options: dict[str, Any], n: int = 4, members: int = 6) -> list[dict[str, Any]]:
    """A sample of duplicate groups from OUT/dedup/: the largest of each method first (so every method
    that found something shows), then the largest others; each the row that stays and up to `members`
    of its duplicates with how each was found."""
    fs, root = get_fs(output, options)
    files = sorted(fs.glob(join(root, DEDUP) + "/*.parquet"))
    if not files:
        return []
    cols = [KEY, SOURCE, "duplicate_of", "duplicate_of_source", "method", "similarity"]
    parts = []
    for path in files:
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=cols)
        parts.append(t.filter(pc.is_valid(t["duplicate_of"])))
    dups = pa.concat_tables(parts).to_pylist()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in dups:
        groups.setdefault((r["duplicate_of_source"], r["duplicate_of"]), []).append(r)
    order = sorted(groups, key=lambda g: (-len(groups[g]), g))
    chosen: list[tuple[str, str]] = []
    for method in ("exact", "perceptual", "semantic"):
        first = next((g for g in order if g not in chosen and any(r["method"] == method for r in groups[g])), None)
        if first is not None:
            chosen.append(first)
    chosen += [g for g in order if g not in chosen][: max(0, n - len(chosen))]
    return [{"kept": {SOURCE: g[0], KEY: g[1]}, "size": 1 + len(groups[g]),
             "duplicates": [{SOURCE: r[SOURCE], KEY: r[KEY], "method": r["method"],
                             "similarity": None if r["similarity"] is None else round(float(r["similarity"]), 6)}
                            for r in sorted(groups[g], key=lambda r: (r[SOURCE], r[KEY]))[:members]]}
            for g in chosen[:n]]


def _runs(fs: Any, root: str) -> list[dict[str, Any]]:
    """Every run into OUT, oldest first: its id, job, rows, seconds (from runs/<run_id>.json)."""
    try:
        paths = sorted(fs.glob(join(root, RUNS) + "/*.json"))
    except FileNotFoundError:
        return []
    out = []
    for p in paths:
        r = _json(fs, p) or {}
        out.append({"run_id": r.get("run_id") or posixpath.basename(p)[:-5], "job": r.get("job"),
                    "rows": r.get("rows"), "seconds": r.get("seconds"), "retry": "retry" in r})
    return out


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _na(x: Any, unit: str = "") -> str:
    """A value of run.json as printed, "n/a" where it has none (no steady window, an older or partial run.json)."""
    return "n/a" if x is None else f"{x}{unit}"


def render(d: dict[str, Any]) -> str:
    """The summary a person reads."""
    lines = [f"capfilt inspect {d['output']}: job {d['job'] or 'unknown (no run.json)'}, {d['rows']} rows from "
             f"{d['shards_committed']} committed shards"]
    lines.append("  status: " + ", ".join(f"{k} {v} ({v / d['rows']:.1%})" for k, v in d["counts"].items())
                 if d["rows"] else "  status: no rows")
    if "caption_flags" in d:
        lines.append("  caption flags (candidates): " + (", ".join(f"{k} {v}" for k, v in d["caption_flags"].items())
                                                         or "none"))
    if "keep" in d:
        k = d["keep"]
        lines.append(f"  kept: {k['rows']} of {k['of_ok_rows']} ok rows ({k['fraction']:.1%})"
                     + (f"; alt-text kept: {k['alt_text_rows']} ({k['alt_text_fraction']:.1%})" if "alt_text_rows" in k
                        else ""))
    for kind, s in d.get("scores", {}).items():
        for who, label in (("alt_text", "alt-text"), ("captions", "captions")):
            st = s.get(who)
            if st and st["n"]:
                q = st["quantiles"]
                lines.append(f"  {kind} {label:8s} n={st['n']:<6d} " + " ".join(f"{p}={_num(v)}" for p, v in q.items()))
    if "thresholds" in d:
        approx = " (± rows: {})".format(d["thresholds"][0]["error_rows"]) if d["thresholds"][0]["error_rows"] else ""
        lines.append(f"  thresholds on the alt-text score ({d.get('ranked_by') or TEXT_SCORE}){approx}:")
        for t in d["thresholds"]:
            lines.append(f"    keep {t['keep_fraction']:.0%}: score >= {_num(t['threshold'])} keeps "
                         f"{t['alt_texts_kept']:.0f} of {t['of']}")
        if "configured_threshold" in d:
            c = d["configured_threshold"]
            lines.append(f"    configured threshold {c['threshold']}: keeps {c['alt_texts_kept']:.0f} of {c['of']}")
    if "keep_request" in d:
        t = d["keep_request"]
        lines.append(f"  --keep {t['keep_fraction']}: threshold {_num(t['threshold'], 6)} keeps {t['alt_texts_kept']:.0f} "
                     f"of {t['of']} alt-texts" + (f" (± {t['error_rows']} rows)" if t["error_rows"] else ""))
    for column, h in d.get("curation", {}).items():
        q = h["quantiles"]
        lines.append(f"  {column} n={h['n']:<6d} " + " ".join(f"{p}={_num(v)}" for p, v in q.items()))
        if "configured" in h:
            c = h["configured"]
            lines.append(f"    {h['field']} {c['threshold']}: {column} {h['rule']} {c['threshold']} keeps "
                         f"{c['kept']:.0f} of {c['of']}")
        lines.append(f"    thresholds ({column} {h['rule']} t): " + ", ".join(
            f"keep {t['keep_fraction']:.0%} t={_num(t['threshold'])}" for t in h["thresholds"]))
    if "dedup" in d:
        dd = d["dedup"]
        found = ", ".join(f"{m} {v}" for m, v in dd["duplicates"].items()) or "none"
        lines.append(f"  dedup: {dd['kept']} of {dd['rows']} rows kept (the run kept {_na(dd['run_kept'])} of "
                     f"{_na(dd['ok'])} ok rows); duplicates: {found}"
                     + ("" if dd["parts"] == dd["files"] else f"; {dd['parts']} of {dd['files']} parts written"))
        for g in dd["groups"]:
            lines.append(f"    group of {g['size']}: {g['kept'][KEY]} stays; " + ", ".join(
                f"{x[KEY]} ({x['method']} {_num(x['similarity'], 3)})" for x in g["duplicates"]))
    for table, info in d.get("tables", {}).items():
        if info["embeddings"]:
            lines.append(f"  {table}: " + ", ".join(info["embeddings"]))
    r = d.get("run")
    if r:
        lines.append(f"  last run {_na(r.get('run_id'))}: {_na(r.get('seconds'), ' s')}, "
                     f"{_na(r.get('images_per_s'), ' img/s')} (steady {_na(r.get('steady_images_per_s'), ' img/s')}), "
                     f"first block after {_na(r.get('first_block_s'), ' s')}")
        for op, t in (r.get("stages") or {}).items():
            lines.append(f"    {op}: busy {t.get('busy_s') or 0:.1f} s")
        for section, model in (r.get("models") or {}).items():
            rev = (r.get("revisions") or {}).get(section)
            lines.append(f"    model {section}: {model}" + (f" @ {rev}" if rev else ""))
    if d.get("runs"):
        lines.append(f"  runs into this output: {len(d['runs'])} (" + ", ".join(x["run_id"] for x in d["runs"][-3:]) + ")")
    return "\n".join(lines)
