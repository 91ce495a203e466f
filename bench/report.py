"""The tables the benchmarks print (and BENCHMARKS.md quotes)."""

from __future__ import annotations

from typing import Any


def _side_row(what: str, c: dict[str, Any], unit: str = "img_s") -> str:
    """A row of one `each_way` figure; `same_tokens`, where measured, is said in the row."""
    if "same_tokens" in c:
        what += " (same captions)" if c["same_tokens"] else " (CAPTIONS DIFFER)"
    digits = 2 if unit == "img_s" else 1
    return (f"| {what} ({unit.replace('_', '/')}) | {c[f'stock_{unit}']:.{digits}f} | {c[f'capfilt_{unit}']:.{digits}f} "
            f"| {c['ratio']:.2f}× | |")

def cpu_table(res: dict[str, Any]) -> str:
    lines = ["| measure | baseline | capfilt | ratio | target |", "|---|---|---|---|---|"]
    if "decode" in res:
        d = res["decode"]
        lines += [
            f"| decode+resize per core, web JPEGs → {d['target_px']} px (img/s) | PIL + processor "
            f"{d['baseline_img_s']:.0f} | {d['capfilt_img_s']:.0f} | {d['ratio']:.2f}× | ≥ 3× |",
            f"| fidelity of that decode (embedding cos, min / mean) | | {d['fidelity_cos_min']:.4f} / "
            f"{d['fidelity_cos_mean']:.4f} | | ≥ 0.99 |",
        ]
    for part, name in (("cross", "small BLIP"), ("cross_base", "BLIP-base (full size, 2 threads)")):
        if part in res:
            c = res[part]
            lines.append(_side_row(f"{name} ({c['params_m']}M, {c['image_size']} px, batch {c['batch_size']}), beam "
                                   f"{c['num_beams']}, model alone: transformers' attention vs capfilt's", c))
    if "beam_cache" in res:
        c = res["beam_cache"]
        lines.append(_side_row(f"ViT-GPT2 (full size, 2 threads, batch {c['batch_size']}), beam {c['num_beams']}, whole "
                               "generate: cross-attention cache copied every step vs left in place", c))
    if "itm_cross" in res:
        c = res["itm_cross"]
        lines.append(_side_row(f"BLIP-base ITM text encoder, {c['images']} images × {c['texts_per_image']} texts: image K/V "
                               f"per text vs once per image (max abs diff {c['max_abs_diff']:.1e})", c, "texts_s"))
    for name in ("small", "tiny"):
        if name not in res:
            continue
        r = res[name]
        lines += [
            f"| {name} BLIP ({r['params_m']}M, batch {r['batch_size']}): pipeline steady state vs model alone (img/s) "
            f"| {r['model_alone_img_s']:.1f} | {r['pipeline_steady_img_s']:.1f} | {r['pipeline_vs_model_alone']:.2f}× "
            "| ≥ 0.85× |",
            f"| {name} BLIP: pipeline incl. startup ({r['pipeline_first_block_s']:.1f}s to first block) vs model alone "
            f"| {r['model_alone_img_s']:.1f} | {r['pipeline_img_s']:.1f} | {r['pipeline_total_vs_model_alone']:.2f}× | |",
            f"| {name} BLIP: pipeline steady state vs per-image loop (img/s) | {r['loop_img_s']:.1f} "
            f"| {r['pipeline_steady_img_s']:.1f} | {r['pipeline_vs_loop']:.2f}× | {'≥ 1.8×' if name == 'small' else '≥ 10×'} |",
        ]
    for key, r in res.items():
        if key.startswith("vlm:"):
            whole = f"whole run incl. {r['pipeline_first_block_s']:.0f} s to first block: {r['pipeline_img_s']:.1f}"
            lines.append(f"| {key[4:]} ({r['params_m']}M, batch {r['batch_size']}, greedy 20 tokens): caption stage in the "
                         f"pipeline ({whole}) "
                         f"vs model alone (img/s); same captions {r['same_captions']}/{r['images']} "
                         f"| {r['model_alone_img_s']:.1f} | {r['pipeline_stage_img_s']:.1f} "
                         f"| {r['pipeline_vs_model_alone']:.2f}× | ≥ 0.85×, all alike |")
    if "memory" in res:
        m = res["memory"]
        span = f"{m['images_1x']} → {m['images_10x']} images"
        lines += [
            f"| peak memory (sum of PSS) of driver + Ray, {span} (GiB) | {m['peak_pss_1x'] / 2**30:.2f} "
            f"| {m['peak_pss_10x'] / 2**30:.2f} | {m['ratio']:.2f}× | ≤ 1.1× |",
            f"| the same as a sum of RSS (shared pages counted once per process) | {m['peak_rss_1x'] / 2**30:.2f} "
            f"| {m['peak_rss_10x'] / 2**30:.2f} | {m['rss_ratio']:.2f}× | |",
        ]
    if "bad_rows" in res:
        b = res["bad_rows"]
        lines.append(f"| cost of a bad row: {b['rows']} undecodable images through DecodeImages (ms per row; good web "
                     f"JPEGs beside) | {b['good_ms_per_row']:.2f} | {b['bad_ms_per_row']:.2f} | | ≤ 5 ms |")
    if "feed" in res:
        f = res["feed"]
        for shape, what in (("blip", "BLIP-shaped (beam 3, batch 256)"), ("clip", "CLIP-shaped (image features, batch 256)")):
            if shape not in f:
                continue
            c = f[shape]
            m, d = c["model_bound"], c["decode_bound"]
            lines += [
                f"| feed, {what}, simulated device at 0.6× the decode capacity ({m['device_img_s']:.0f} img/s): device "
                f"busy in the steady window ({m['window_s']:.1f} s): one batch per actor → two (overlap) | "
                f"{c['model_bound_serial']['busy']:.2f} | {m['busy']:.2f} | | ≥ 0.9 |",
                f"| feed, {what}, device at 3×: img/s in the steady window vs the decode capacity "
                f"({c['decode_img_s_per_core']:.0f} img/s per core × {f['decode_cores']:g}) | {c['decode_capacity_img_s']:.0f} | "
                f"{d['window_img_s']:.0f} | {d['vs_capacity']:.2f}× | ≥ 0.85× |",
            ]
    if "stage" in res:
        st = res["stage"]
        pc, lay, sh = st["per_core"], st["layers"], st["shards"]
        lines += [
            f"| read+decode stage per core (img/s in its steady window on a Ray of {pc['cores']} CPUs ÷ {pc['cores']}) vs "
            f"capfilt's decode as the stage calls it (hashes included), in one process, web JPEGs → {st['target']}; "
            f"the median of {len(pc['ratios'])} runs, each against the in-process rate on the run's images measured just "
            f"before and after it on quiet cores / against the fastest of the layers' passes (CPU time) before Ray "
            f"started; decode isolated (default) / not | {pc['decode_img_s']:.0f} / "
            f"{1e3 / lay['decode_hashed_ms']:.0f} | {pc['stage_img_s']:.0f} | {pc['ratio']:.2f}× / "
            f"{pc['stage_img_s'] * lay['decode_hashed_ms'] / 1e3:.2f}×; not isolated {pc['ratio_plain']:.2f}× | ≥ 0.8× |",
            f"| its layers in one process, CPU ms per image: decode {lay['decode_ms']:.2f}, with the hashes "
            f"{lay['decode_hashed_ms']:.2f}; tar streaming + blocks "
            f"{lay['read_ms']:.2f}; the stage {lay['stage_ms']:.2f}; with the isolated child {lay['stage_isolated_ms']:.2f} "
            f"| | | | |",
            f"| {sh['images']:,} images as {sh['many']} shards of {sh['images'] // sh['many']} vs {sh['few']} of "
            f"{sh['images'] // sh['few']}, read+decode (s); a read task per shard (before) → small shards packed | "
            f"{sh['few_s']:.1f} | {sh['many_unpacked_s']:.1f} → {sh['many_s']:.1f} | {sh['ratio_unpacked']:.2f}× → "
            f"{sh['ratio']:.2f}× | ≤ 1.3× |",
        ]
    if "dedup" in res:
        dd = res["dedup"]
        full, quarter = dd["full"], dd["quarter"]
        lines += [
            f"| semantic dedup of {full['rows']:,} synthetic {dd['dim']}-d {dd['dtype']} embeddings ({full['clusters']} "
            f"clusters, eps {dd['eps']}; {full['duplicates']:,} duplicates): seconds; peak RSS of the largest process "
            f"(MiB) at {quarter['rows']:,} → {full['rows']:,} | {quarter['seconds']:.0f} s, {quarter['peak_rss'] / 2**20:.0f} | "
            f"{full['seconds']:.0f} s, {full['peak_rss'] / 2**20:.0f} | {dd['memory_ratio']:.2f}× | ≤ 1.2× |",
            f"| the same on {dd['check']['rows']:,} rows vs every pair compared: groups found / brute force / in common | "
            f"{dd['check_groups']['brute_force']} | {dd['check_groups']['found']} | {dd['check_groups']['common']} | "
            f"{'the same' if dd['check_same_groups'] else 'NOT the same'} |",
        ]
        if "check_reference" in dd:
            ref = dd["check_reference"]
            lines.append(f"| the same vs SemDeDup in one process, every pair of each cluster at once: groups (with the "
                         f"row that stays) found / reference / in common | {ref['reference']} | {ref['found']} | "
                         f"{ref['common']} | {'the same' if dd['check_same_as_reference'] else 'NOT the same'} |")
        if "estimate" in dd:
            e = dd["estimate"]
            lines.append(f"| `estimate dedup` of the {full['rows']:,} rows from {e['sample_rows']:,}: predicted vs the run (s) | "
                         f"{e['predicted_s']:.0f} | {full['seconds']:.0f} | {e['error']:+.0%} | ±25 % |")
    if "plan" in res:
        pl = res["plan"]
        lines.append(f"| the plan of {pl['shards']:,} shards on S3 (moto), {pl['committed']:,} committed: seconds (requests), "
                     f"markers read one by one → from the runs' indexes; a brace range: {pl['brace']['seconds']:.1f} s "
                     f"({pl['brace']['requests']}) | {pl['glob_no_index']['seconds']:.1f} "
                     f"({pl['glob_no_index']['requests']:,}) | "
                     f"{pl['glob']['seconds']:.1f} ({pl['glob']['requests']}) | "
                     f"{pl['glob_no_index']['seconds'] / max(pl['glob']['seconds'], 1e-9):.0f}× | seconds, bounded requests |")
    for part, what in (("estimate", ""), ("estimate_ahead", ", decode ahead of the loading model")):
        if part not in res:
            continue
        e = res[part]
        lines.append(f"| `capfilt estimate` on {e['sample']} images, then the {e['images']}-image caption run it predicts "
                     f"(tiny BLIP{what}; wall time, s; images counted {e['images_counted']} of {e['images_actual']}) | "
                     f"{e['actual_s']:.1f} | {e['predicted_s']:.1f} | {e['error']:+.0%} | within ±25 % |")
    if "parquet_memory" in res:
        q = res["parquet_memory"]
        lines.append(f"| read of a Parquet shard, one row group of {q['row_group_mib_1x']:.0f} vs {q['row_group_mib_10x']:.0f} "
                     f"MiB in small pages (peak RSS of the reading process, MiB; imports alone {q['imports_peak_mib']:.0f}, "
                     f"pyarrow's default pages at 10×: {q['read_peak_mib_10x_default_pages']:.0f}) | "
                     f"{q['read_peak_mib_1x']:.0f} | {q['read_peak_mib_10x']:.0f} | {q['ratio']:.2f}× | ≤ 1.1× |")
    if "driver_memory" in res:
        d = res["driver_memory"]
        lines += [
            f"| driver peak RSS, {d['images']} images as shards of {d['shard_rows_1x']} vs {d['shard_rows_10x']} rows "
            f"({d['embedding_dim']}-d embeddings, rows_per_part {d['rows_per_part']}; MiB) | "
            f"{d['driver_peak_rss_1x'] / 2**20:.0f} | {d['driver_peak_rss_10x'] / 2**20:.0f} | {d['ratio']:.2f}× | ≤ 1.1× |",
            f"| the same 10× shards without parts (rows_per_part {d['shard_rows_10x_no_parts']}: whole shards held) | "
            f"{d['driver_peak_rss_1x'] / 2**20:.0f} | {d['driver_peak_rss_10x_no_parts'] / 2**20:.0f} | "
            f"{d['no_parts_ratio']:.2f}× | |",
        ]
    if "startup" in res:
        lines += startup_rows(res["startup"])
    return "\n".join(lines)


def _phases(r: dict[str, Any]) -> str:
    """A run's phases in one cell: the whole command, what run.json counted, and (today's code) its phases."""
    if not r.get("phases"):
        return (f"run.json {r['run_json_seconds']:.1f} s (first block {r['first_block_s']:.1f}), outside it "
                f"{r['outside_run_json_s']:.1f}")
    keep = [k for k in r["phases"] if k not in ("total", "commit")]
    actors = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("actor_start") or {}).items())
    warm = ", ".join(f"{k} {v}" for k, v in (r.get("warm_actors") or {}).items())
    return (", ".join(f"{k} {r['phases'][k]:.1f}" for k in keep) + (f" (actor: {actors})" if actors else "")
            + (f" (warm actor: {warm})" if warm else ""))


def _runs(r: dict[str, Any] | None) -> str:
    return ", ".join(f"{x:.1f}" for x in r.get("wall_s_runs", [])) if r else ""


def startup_rows(s: dict[str, Any]) -> list[str]:
    """Whole commands (wall time around the process), before vs after; each row says its phases."""
    rows = []
    for key, what, target in (("caption", f"{s['images_caption']}-image `caption`, configs/tiny.yaml", "≤ 8 s"),
                              ("embed", f"{s['images_embed']}-image `embed`, configs/tiny-embed.yaml", "≥ 2× img/s"),
                              ("caption_{}_attached_1", f"{s['images_caption']}-image `caption` attached to a running "
                               "local Ray (first job)", ""),
                              ("caption_{}_attached_2", f"{s['images_caption']}-image `caption` attached to a running "
                               "local Ray (second job)", "≤ 4 s")):
        after = s.get(key.format("after") if "{}" in key else f"{key}_after")
        before = s.get(key.format("before") if "{}" in key else f"{key}_before")
        if after is None:
            continue
        ratio = f"{before['wall_s'] / after['wall_s']:.2f}×" if before else ""
        was = f"{before['wall_s']:.1f} ({before['img_s']:.1f})" if before else ""
        rows.append(f"| {what}: whole command, s (img/s) | {was} | {after['wall_s']:.1f} ({after['img_s']:.1f}) "
                    f"| {ratio} | {target} |")
        if len(after.get("wall_s_runs", [])) > 1:
            rows.append(f"| runs, s (the median's phases below) | {_runs(before)} | {_runs(after)} | | |")
        rows.append(f"| phases, s — after: {_phases(after)}"
                    + (f"; before: {_phases(before)}" if before else "") + " | | | | |")
    return rows


def _pct(x: float | None) -> str:
    return f"{x:.0f} %" if x is not None else "n/a"

def gpu_row(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {name} | failed: {r['error'][:120]} | | | |"
    return f"| {name} | {r['model_only_img_s']:.1f} | {r['batch_size']} | {r['dtype']} | {_pct(r['gpu_busy_pct'])} |"

E2E_HEADER = ("| job (preset) | images | img/s end to end | steady state | first block (s) | GPU busy | busy s per stage |\n"
              "|---|---|---|---|---|---|---|")

def e2e_row(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {name} ({r['job']}, {r['preset']}) | failed: {r['error'][:160]} | | | | | |"
    stages = ", ".join(f"{op}: {t['busy_s']:.1f}" for op, t in r["stages"].items())
    steady = f"{r['steady_img_s']:.1f}" if r["steady_img_s"] else "n/a"
    return (f"| {name} ({r['job']}, {r['preset']}) | {r['images']} | {r['img_s']:.1f} | {steady} "
            f"| {r['first_block_s'] or 0:.1f} | {_pct(r['gpu_busy_pct'])} | {stages} |")

def e2e_table(res: dict[str, Any]) -> str:
    return "\n".join([E2E_HEADER, *(e2e_row(name, r) for name, r in res.items())])
