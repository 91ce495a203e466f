"""`capfilt inspect OUT --html report.html`: one self-contained page of what a run decided.

Sections: the summary; score histograms per scorer (alt-text vs candidates, thresholds drawn) and per
curation head; a gallery (thumbnail, alt-text, candidates with their scores, kept or not: the best, the
worst, a random sample and a sample of each error status); the image × text similarity heatmap of a
sample (as in the CLIP blog); for rejected alt-texts the ITM GradCAM map per word (as in the BLIP blog);
the curation heads' highest and lowest scored images; and after `capfilt dedup`, the final kept count
beside the run's and a sample of duplicate groups, each group's images side by side. Images are inlined as
data URIs (no network); thumbnails are re-read from the input shards by `source` and `key` (the output
stores no images). Plots are matplotlib's.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Config, load_config
from pipeline.io.readers import read_shard
from pipeline.io.shards import list_shards
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import committed_shards
from pipeline.review.inspection import render, thresholds
from pipeline.runner.report import run_defaults
from pipeline.schema import (
    CAPTION,
    CAPTION_SCORES,
    CAPTIONS,
    ERROR,
    HEAD_SCORES,
    IMAGE,
    KEEP,
    KEEP_TEXT,
    KEY,
    OK,
    SCORE_COLUMNS,
    SOURCE,
    STATUS,
    TEXT,
    TEXT_SCORE,
)

log = logging.getLogger(__name__)
SECTIONS = ("summary", "histograms", "gallery", "heatmap", "gradcam", "curation", "dedup")
GALLERY_COLUMNS = (KEY, SOURCE, STATUS, ERROR, TEXT, CAPTION, CAPTIONS, TEXT_SCORE, CAPTION_SCORES, KEEP, KEEP_TEXT,
                   *(c for pair in SCORE_COLUMNS.values() for c in pair), *HEAD_SCORES)


def run_config(run: dict[str, Any], options: dict[str, Any]) -> Config:
    """The run's config as run.json keeps it (storage from the caller: it is redacted there), models on
    whatever device this machine has."""
    base = run_defaults(run)
    cfg = load_config(None, [f"{s}.device=auto" for s in ("caption", "itm", "clip") if s in base], defaults=base)
    return replace(cfg, storage=options)


def committed_rows(output: str, options: dict[str, Any], table: str = "captions") -> pa.Table | None:
    """The gallery's columns of every committed file of `table` (no embeddings, no meta)."""
    fs, root = get_fs(output, options)
    parts = []
    for m in committed_shards(output, options).values():
        path = join(root, table, f"{m['name']}.parquet")
        if not fs.exists(path):
            continue
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in GALLERY_COLUMNS if c in pf.schema_arrow.names]
            parts.append(pf.read(columns=cols))
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def pick(rows: pa.Table, per: int = 4, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """(why, row): the best and worst alt-texts by score, a random sample of ok rows, and up to two rows of
    each error status."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    ok = rows.filter(pc.equal(rows[STATUS], OK))
    if TEXT_SCORE in rows.column_names:
        scored = ok.filter(pc.is_valid(ok[TEXT_SCORE]))
        order = pc.sort_indices(scored, sort_keys=[(TEXT_SCORE, "descending"), (KEY, "ascending")]).to_pylist()
        out += [("best", scored.slice(i, 1).to_pylist()[0]) for i in order[:per]]
        out += [("worst", scored.slice(i, 1).to_pylist()[0]) for i in order[::-1][:per] if i not in order[:per]]
    if ok.num_rows:
        shown = {r[KEY] + r[SOURCE] for _, r in out}
        n_random = per if out else per * 2  # a job without scores: the random sample is the gallery
        for i in rng.permutation(ok.num_rows)[: n_random * 2]:
            r = ok.slice(int(i), 1).to_pylist()[0]
            if r[KEY] + r[SOURCE] not in shown and sum(w == "random" for w, _ in out) < n_random:
                out.append(("random", r))
    for status in sorted(set(rows[STATUS].to_pylist()) - {OK}):
        bad = rows.filter(pc.equal(rows[STATUS], status))
        out += [(status, bad.slice(i, 1).to_pylist()[0]) for i in range(min(2, bad.num_rows))]
    return out


def images_of(cfg: Config, inputs: list[str], wanted: list[dict[str, Any]]) -> dict[tuple[str, str], bytes]:
    """(source, key) → image bytes, re-read from the input shards (each shard read once, for its keys only)."""
    by_source: dict[str, set[str]] = {}
    for r in wanted:
        by_source.setdefault(r[SOURCE], set()).add(r[KEY])
    shards = {s.uri: s for s in list_shards(inputs, cfg.input.format, cfg.storage, cfg.input.image_extensions,
                                            cfg.input.files_per_shard)}
    out = {}
    for source, keys in by_source.items():
        if source not in shards:
            log.warning("report: input shard %s is no longer listed by the run's inputs: no thumbnails", source)
            continue
        for t in read_shard(replace(shards[source], keys=frozenset(keys)), cfg.input, cfg.storage):
            for row in t.select([KEY, IMAGE]).to_pylist():
                if row[IMAGE] is not None:
                    out[(source, row[KEY])] = row[IMAGE]
    return out


def thumbnail(data: bytes | None, size: int = 160) -> str | None:
    """A JPEG data URI, or None for bytes that are not an image PIL opens."""
    from PIL import Image

    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            im = opened.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception:  # noqa: BLE001 - any undecodable image is a row without a thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: PNGs only
    import matplotlib.pyplot as plt

    return plt


def histograms(rows: pa.Table, marks: dict[str, float]) -> dict[str, str]:
    """scorer → PNG: its alt-text scores and its candidates' scores, thresholds as vertical lines."""
    plt = _pyplot()
    out = {}
    for kind, (text_col, caps_col) in SCORE_COLUMNS.items():
        if text_col not in rows.column_names:
            continue
        alt = pc.drop_null(rows[text_col]).to_numpy(zero_copy_only=False)
        caps = pc.drop_null(pc.list_flatten(rows[caps_col])).to_numpy(zero_copy_only=False)
        fig, ax = plt.subplots(figsize=(6, 2.6))
        both = np.concatenate([alt, caps]) if len(alt) + len(caps) else np.zeros(1)
        bins = np.linspace(float(both.min()), float(both.max()) + 1e-6, 31)
        ax.hist(caps, bins=bins, alpha=0.6, label=f"candidates (n={len(caps)})")
        ax.hist(alt, bins=bins, alpha=0.6, label=f"alt-text (n={len(alt)})")
        for label, x in marks.items():
            if label.startswith(kind):
                ax.axvline(x, color="k", linestyle="--", linewidth=1)
                ax.text(x, ax.get_ylim()[1] * 0.9, f" {label.split(':', 1)[1]} {x:.3f}", fontsize=7)
        ax.set_xlabel(f"{kind} score")
        ax.legend(fontsize=7)
        out[kind] = _png(fig)
    for column in HEAD_SCORES:
        if column not in rows.column_names:
            continue
        x = pc.drop_null(rows[column]).to_numpy(zero_copy_only=False)
        if not len(x):
            continue
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.hist(x, bins=30, alpha=0.8, label=f"ok rows (n={len(x)})")
        for label, t in marks.items():
            if label.startswith(column + ":"):
                ax.axvline(t, color="k", linestyle="--", linewidth=1)
                ax.text(t, ax.get_ylim()[1] * 0.9, f" {label.split(':', 1)[1]} {t:.3f}", fontsize=7)
        ax.set_xlabel(column)
        ax.legend(fontsize=7)
        out[column] = _png(fig)
    return out


def extremes(rows: pa.Table, column: str, per: int = 4) -> list[tuple[str, dict[str, Any]]]:
    """("highest"|"lowest", row): a curation head's `per` highest and lowest scored ok rows (ties by key)."""
    scored = rows.filter(pc.and_(pc.equal(rows[STATUS], OK), pc.is_valid(rows[column])))
    order = pc.sort_indices(scored, sort_keys=[(column, "descending"), (KEY, "ascending")]).to_pylist()
    top = order[:per]
    return ([("highest", scored.slice(i, 1).to_pylist()[0]) for i in top]
            + [("lowest", scored.slice(i, 1).to_pylist()[0]) for i in order[::-1][:per] if i not in top])


def run_pixels(cfg: Config, models: dict[str, Any], datas: list[bytes], section: str) -> np.ndarray:
    """A model's pixels for these images as the run decoded them: one decode for all of the run's image
    models at once (their targets together choose JPEG's DCT scale), with the run's decode settings."""
    from pipeline.decode.image import decode
    from pipeline.job import decode_stage
    from pipeline.models.loading import image_target

    sections = [s for s in ("caption", "itm", "clip") if s in models]
    stage, columns = decode_stage(cfg, {s: image_target(getattr(cfg, s), s, cfg.storage) for s in sections})
    targets = stage.args[1]
    d = cfg.decode
    return np.stack([decode(x, targets, d.max_pixels, d.formats, d.draft, d.fast)[0][columns[section]] for x in datas])


def similarity(cfg: Config, models: dict[str, Any], datas: list[bytes], texts: list[str]) -> tuple[str, np.ndarray]:
    """(scorer, images × texts matrix): CLIP cosine where the run had CLIP, else BLIP ITM probability;
    a cell of an image and its own alt-text is the score the run wrote for that row."""
    if "clip" in models:
        from pipeline.models.clip import load_clip

        clip = load_clip(cfg.clip, cfg.storage)
        return "clip", clip.embed_images(run_pixels(cfg, models, datas, "clip")) @ clip.embed_texts(texts).T
    from pipeline.models.itm import load_itm

    itm = load_itm(cfg.itm, cfg.storage)
    return "itm", np.array(itm.score(run_pixels(cfg, models, datas, "itm"), [texts] * len(datas))[0])


def heatmap_png(matrix: np.ndarray, thumbs: list[str | None], texts: list[str], scorer: str) -> str:
    plt = _pyplot()
    n_img, n_txt = matrix.shape
    fig, ax = plt.subplots(figsize=(1.2 * n_txt + 3, 0.9 * n_img + 1.5))
    ax.imshow(matrix, cmap="viridis")
    for i in range(n_img):
        for j in range(n_txt):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(n_txt), [t[:28] + ("…" if len(t) > 28 else "") for t in texts], rotation=40, ha="right",
                  fontsize=7)
    ax.set_yticks(range(n_img), [f"image {i + 1}" for i in range(n_img)], fontsize=7)
    ax.set_title(f"{scorer} score: image × text")
    return _png(fig)


def gradcam(model: Any, processor: Any, image: Any, text: str, layer: int | None = None) -> tuple[list[str], np.ndarray, float]:
    """BLIP's ITM GradCAM (the BLIP blog): the gradient of the ITM match logit with respect to one
    cross-attention layer's attention over the image patches, clamped at 0, times that attention,
    averaged over heads → (tokens, maps of shape (tokens, grid, grid), match probability).

    `model`: transformers' BlipForImageTextRetrieval with eager attention (the attention probabilities
    must be tensors in the graph). `layer`: the text encoder's cross-attention layer (BLIP's demo uses
    8 of 12; by default the same depth here)."""
    import torch

    n_layers = model.config.text_config.num_hidden_layers
    layer = round(n_layers * 8 / 12) if layer is None else layer
    inputs = processor(images=image, text=text, return_tensors="pt")
    pv = inputs["pixel_values"].to(model.device, model.dtype)
    image_embeds = model.vision_model(pixel_values=pv).last_hidden_state
    out = model.text_encoder(input_ids=inputs["input_ids"].to(model.device),
                             attention_mask=inputs["attention_mask"].to(model.device),
                             encoder_hidden_states=image_embeds, output_attentions=True, return_dict=True)
    logits = model.itm_head(out.last_hidden_state[:, 0, :])
    attn = out.cross_attentions[layer]  # (1, heads, tokens, 1 + patches)
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), attn)
    cam = (attn * grad.clamp(min=0)).mean(dim=1)[0, :, 1:]  # heads averaged; the image's CLS token dropped
    grid = int(math.isqrt(cam.shape[-1]))
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    prob = float(torch.softmax(logits.detach().float(), dim=-1)[0, 1])
    return tokens, cam.reshape(len(tokens), grid, grid).detach().float().cpu().numpy(), prob


def gradcam_png(image: Any, tokens: list[str], maps: np.ndarray, title: str) -> str:
    from PIL import Image

    plt = _pyplot()
    words = [(t, m) for t, m in zip(tokens, maps, strict=True) if t not in ("[CLS]", "[SEP]", "[PAD]", "[ENC]", "[DEC]")]
    words = words[:11]
    fig, axes = plt.subplots(1, len(words) + 1, figsize=(1.7 * (len(words) + 1), 2.1))
    axes = np.atleast_1d(axes)
    im = np.asarray(image.convert("RGB").resize((160, 160)))
    axes[0].imshow(im)
    axes[0].set_title("image", fontsize=7)
    for ax, (tok, m) in zip(axes[1:], words, strict=True):
        up = np.asarray(Image.fromarray((m / (m.max() + 1e-12) * 255).astype(np.uint8)).resize((160, 160),
                                                                                               Image.Resampling.BILINEAR))
        ax.imshow(im)
        ax.imshow(up, cmap="jet", alpha=0.5)
        ax.set_title(tok, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title[:120], fontsize=8)
    return _png(fig)


def load_gradcam_model(cfg: Config) -> tuple[Any, Any]:
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    from pipeline.models.loading import pretrained_kwargs, resolve_model

    path = resolve_model(cfg.itm.model, cfg.storage)
    kw = pretrained_kwargs(cfg.itm)
    model = BlipForImageTextRetrieval.from_pretrained(path, attn_implementation="eager", **kw).eval()
    return model, AutoProcessor.from_pretrained(path, **kw)


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _score(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def write_html(report: dict[str, Any], output: str, path: str, options: dict[str, Any], samples: int = 6) -> dict[str, Any]:
    """Writes the page to `path` (local); returns what it holds (sections, images, cells) for the caller."""
    from PIL import Image

    fs, root = get_fs(output, options)
    run = json.loads(fs.cat_file(join(root, "run.json")))
    cfg = run_config(run, options)
    models = run.get("models") or {}
    table = "captions" if "captions" in report.get("tables", {}) else next(iter(report.get("tables", {})), "captions")
    rows = committed_rows(output, options, table)
    made: dict[str, Any] = {"sections": list(SECTIONS)}
    body = [f'<section id="summary"><h2>Summary</h2><pre>{_e(render(report))}</pre></section>']

    marks = {f"{k}:threshold": v for k, v in thresholds(run.get("config") or {}).items()}
    for column, h in report.get("curation", {}).items():
        if "configured" in h:
            marks[f"{column}:{h['field']}"] = h["configured"]["threshold"]
    if "keep_request" in report and report.get("ranked_by"):
        marks[f"{report['ranked_by']}:keep {report['keep_request']['keep_fraction']:.0%}"] = report["keep_request"]["threshold"]
    hists = histograms(rows, marks) if rows is not None else {}
    body.append('<section id="histograms"><h2>Score histograms</h2>' + (
        "".join(f'<figure><img alt="{k} scores" src="{v}"><figcaption>{k}</figcaption></figure>' for k, v in hists.items())
        or "<p>This job scores nothing: no histograms.</p>") + "</section>")

    chosen = pick(rows) if rows is not None else []
    heads = {c: extremes(rows, c) for c in report.get("curation", {}) if rows is not None and c in rows.column_names}
    groups = (report.get("dedup") or {}).get("groups", [])
    wanted = [r for _, r in chosen] + [r for picked in heads.values() for _, r in picked] + [
        m for g in groups for m in (g["kept"], *g["duplicates"])]
    datas = images_of(cfg, list(run.get("inputs") or []), wanted) if wanted else {}
    cards = []
    for why, r in chosen:
        thumb = thumbnail(datas.get((r[SOURCE], r[KEY])))
        img = f'<img alt="{_e(r[KEY])}" src="{thumb}">' if thumb else '<div class="noimg">no image</div>'
        cands = "".join(f"<li>{_e(c)} <b>{_score(s)}</b></li>" for c, s in
                        zip(r.get(CAPTIONS) or [], (r.get(CAPTION_SCORES) or []) + [None] * 99, strict=False))
        kept = {True: "kept", False: "rejected", None: ""}[r.get(KEEP)]
        cards.append(f'<div class="card {why} {kept}"><div class="why">{_e(why)} {kept}</div>{img}'
                     f'<div class="key">{_e(r[KEY])} · {_e(r[STATUS])}</div>'
                     + (f'<div class="err">{_e(r.get(ERROR))}</div>' if r.get(ERROR) else "")
                     + f'<div>alt-text: <i>{_e(r.get(TEXT))}</i> <b>{_score(r.get(TEXT_SCORE))}</b></div>'
                     + (f"<div>caption: {_e(r.get(CAPTION))}</div>" if r.get(CAPTION) else "")
                     + (f"<ol>{cands}</ol>" if cands else "") + "</div>")
    made["gallery"] = len(cards)
    body.append('<section id="gallery"><h2>Gallery</h2><div class="cards">' + "".join(cards) + "</div></section>")

    sample: list[dict[str, Any]] = []  # distinct texts, with their images
    seen: set[str] = set()
    for _, r in chosen:
        text = r.get(TEXT) or r.get(CAPTION)
        if r[STATUS] == OK and text and text not in seen and (r[SOURCE], r[KEY]) in datas and len(sample) < samples:
            sample.append(r)
            seen.add(text)
    if sample and ("clip" in models or "itm" in models):
        texts = [str(r.get(TEXT) or r.get(CAPTION)) for r in sample]
        scorer, matrix = similarity(cfg, models, [datas[(r[SOURCE], r[KEY])] for r in sample], texts)
        thumbs = [thumbnail(datas[(r[SOURCE], r[KEY])], 64) for r in sample]
        cells = "".join(
            f'<tr data-key="{_e(sample[i][KEY])}"><th><img alt="image {i + 1}" src="{thumbs[i]}"></th>'
            + "".join(f'<td class="cell" data-image="{i}" data-text="{j}">{matrix[i, j]:.3f}</td>' for j in range(len(texts)))
            + "</tr>" for i in range(len(sample)))
        head = "<tr><th></th>" + "".join(f"<th>{_e(t)}</th>" for t in texts) + "</tr>"
        made["heatmap_cells"] = int(matrix.size)
        made["heatmap"] = matrix.tolist()
        body.append(f'<section id="heatmap"><h2>Image × text similarity ({scorer})</h2>'
                    f'<img alt="heatmap" src="{heatmap_png(matrix, thumbs, texts, scorer)}">'
                    f'<table class="heat">{head}{cells}</table></section>')
    else:
        body.append('<section id="heatmap"><h2>Image × text similarity</h2><p>No scorer in this run '
                    "(CLIP or BLIP ITM): no heatmap.</p></section>")

    rejected = [r for _, r in chosen if r[STATUS] == OK and r.get(TEXT) and r.get(KEEP_TEXT) is False
                and (r[SOURCE], r[KEY]) in datas][:3]
    if rejected and "itm" in models:
        model, processor = load_gradcam_model(cfg)
        figs = []
        for r in rejected:
            image = Image.open(io.BytesIO(datas[(r[SOURCE], r[KEY])])).convert("RGB")
            tokens, maps, prob = gradcam(model, processor, image, r[TEXT])
            figs.append(f'<figure><img alt="gradcam {_e(r[KEY])}" src="{gradcam_png(image, tokens, maps, r[TEXT])}">'
                        f"<figcaption>{_e(r[KEY])}: “{_e(r[TEXT])}” — ITM match {prob:.3f}</figcaption></figure>")
        made["gradcam"] = len(figs)
        body.append('<section id="gradcam"><h2>Why was this alt-text rejected? (ITM GradCAM per word)</h2>'
                    + "".join(figs) + "</section>")
    else:
        body.append('<section id="gradcam"><h2>Why was this alt-text rejected?</h2><p>'
                    + ("No rejected alt-text in the sample." if "itm" in models else
                       "This run has no BLIP ITM scorer: no GradCAM maps.") + "</p></section>")

    body.append(curation_section(heads, report.get("curation", {}), datas))
    made["curation"] = {c: [(why, r[KEY], r[c]) for why, r in picked] for c, picked in heads.items()}
    body.append(dedup_section(report.get("dedup"), datas))
    made["dedup_groups"] = len(groups)

    page = PAGE.format(title=_e(f"capfilt {report.get('job')}: {output}"), body="\n".join(body))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    made["images"] = page.count("<img ")
    return made


def _figure(data: bytes | None, key: str, caption: str, size: int = 120) -> str:
    thumb = thumbnail(data, size)
    img = f'<img alt="{_e(key)}" src="{thumb}">' if thumb else '<div class="noimg">no image</div>'
    return f'<figure class="thumb" data-key="{_e(key)}">{img}<figcaption>{caption}</figcaption></figure>'


def curation_section(heads: dict[str, list[tuple[str, dict[str, Any]]]], curation: dict[str, Any],
                     datas: dict[tuple[str, str], bytes]) -> str:
    """Per curation head: its highest and lowest scored images, with the score and whether the row was kept."""
    if not heads:
        return ('<section id="curation"><h2>Curation scores</h2><p>No curation head in this run (curate.aesthetic, '
                "curate.nsfw): nothing to show.</p></section>")
    parts = []
    for column, picked in heads.items():
        h = curation.get(column, {})
        rule = (f"{column} {h['rule']} {h['configured']['threshold']} keeps {h['configured']['kept']:.0f} of "
                f"{h['configured']['of']}" if "configured" in h else "no threshold configured")
        for why in ("highest", "lowest"):
            figs = "".join(_figure(datas.get((r[SOURCE], r[KEY])), r[KEY],
                                   f"{_e(r[KEY])} <b>{r[column]:.3f}</b>"
                                   + {True: " kept", False: " rejected", None: ""}[r.get(KEEP)])
                           for w, r in picked if w == why)
            parts.append(f'<div class="extremes" data-column="{column}" data-which="{why}"><h3>{column}: {why} '
                         f"({_e(rule)})</h3>{figs}</div>")
    return '<section id="curation"><h2>Curation scores</h2>' + "".join(parts) + "</section>"


def dedup_section(dedup: dict[str, Any] | None, datas: dict[tuple[str, str], bytes]) -> str:
    """The final kept count beside the run's, and sample duplicate groups, each group's images in a row."""
    if not dedup:
        return ('<section id="dedup"><h2>Duplicates</h2><p>`capfilt dedup` has not run on this output.</p>'
                "</section>")
    found = ", ".join(f"{m}: {v}" for m, v in dedup["duplicates"].items())
    head = (f'<p class="kept">kept after dedup: <b data-final-kept="{dedup["kept"]}">{dedup["kept"]}</b> of '
            f'{dedup["rows"]} rows · kept by the run: {dedup.get("run_kept")} of {dedup.get("ok")} ok rows · '
            f"duplicates: {_e(found)}</p>")
    rows = []
    for g in dedup["groups"]:
        kept = g["kept"]
        figs = _figure(datas.get((kept[SOURCE], kept[KEY])), kept[KEY], f"{_e(kept[KEY])} <b>stays</b>")
        figs += "".join(_figure(datas.get((x[SOURCE], x[KEY])), x[KEY],
                                f"{_e(x[KEY])} {_e(x['method'])} {_score(x['similarity'])}") for x in g["duplicates"])
        rows.append(f'<div class="group" data-size="{g["size"]}">{figs}</div>')
    return '<section id="dedup"><h2>Duplicates</h2>' + head + "".join(rows) + "</section>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .8em; }}
.card {{ width: 220px; border: 1px solid #ccc; border-radius: 6px; padding: .5em; font-size: 12px; }}
.card.kept {{ border-color: #2a2; }} .card.rejected {{ border-color: #c33; }}
.why {{ font-weight: bold; text-transform: uppercase; font-size: 11px; }}
.noimg {{ width: 160px; height: 100px; background: #eee; display: flex; align-items: center; justify-content: center; }}
.err {{ color: #c33; }}
table.heat td {{ text-align: center; padding: .3em; }} table.heat th {{ font-weight: normal; font-size: 11px; max-width: 9em; }}
figure {{ display: inline-block; margin: .5em; }}
figure.thumb {{ width: 130px; font-size: 11px; vertical-align: top; }}
.group {{ border-top: 1px solid #ddd; padding: .3em 0; }}
</style></head>
<body data-images-loaded="pending">
<h1>{title}</h1>
{body}
<script>
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + "/" + imgs.length;
}});
</script>
</body></html>
"""
