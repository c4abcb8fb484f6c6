"""The bench's Markdown report."""

from __future__ import annotations

from typing import Any


# -- report -------------------------------------------------------------------------------------
def _f(v: float, digits: int = 0) -> str:
    return f"{v:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (what `laser-server bench` prints): one function per
    paragraph or table, in this order."""
    lines = [
        *_comparison(results),
        *_scoring(results),
        *_targets(results),
        *_overhead(results),
        *_in_process(results),
        *_loglik_sources(results),
        *_concurrency(results),
        *_n_scaling(results),
        *_doc_scaling(results),
    ]
    return "\n".join(lines) + "\n"


def _comparison(results: dict[str, Any]) -> list[str]:
    """The machine and the run, then every variant against engine + one RM and the floor."""
    m, cfg = results["machine"], results["config"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, load average "
        f"{m['load_average_1m_at_start']} at the start and {m['load_average_1m']} at the end; vLLM "
        f"{m['versions'].get('vllm')}, torch {m['versions'].get('torch')}. Model "
        f"{results['model']} (max_model_len {results['max_model_len']}); RMs "
        f"{', '.join(results['reward_models'])}; n={cfg['n']}, max_tokens={cfg['max_tokens']}, "
        f"{cfg['rounds']} rounds{' (QUICK mode)' if cfg['quick'] else ''}.",
        "",
        "| variant | mean (ms) | p50 (ms) | vs engine + one RM | (median of rounds) "
        "| vs engine alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["comparison"]["rows"].values():
        lines.append(
            f"| {row['label']} | {_f(row['mean_ms'])} | {_f(row['p50_ms'])} | "
            f"{_f(row['vs_engine_rm'], 2)}x | {_f(row['median_round_vs_engine_rm'], 2)}x | "
            f"{_f(row['vs_floor'], 2)}x |"
        )
    picked = results["comparison"]["rm_picked"]
    counts = {rm: picked.count(rm) for rm in dict.fromkeys(picked)}
    return [
        *lines,
        "",
        "RMs the bandit picked in those rounds: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
    ]


def _scoring(results: dict[str, Any]) -> list[str]:
    """RM scoring per request: LASeR's one RM against the ensemble (when measured)."""
    sc = results["comparison"].get("scoring")
    if not sc:
        return []
    per = ", ".join(f"{k} {_f(v)}" for k, v in sc["per_rm_ms"].items())
    return [
        "",
        f"RM scoring per request (ms, mean of the rounds): LASeR as served (the one RM the "
        f"bandit picked) {_f(sc['laser_served_ms'])}, the same RM in process "
        f"{_f(sc['one_rm_in_process_ms'])}; the ensemble of {sc['k']} "
        f"{_f(sc['ensemble_ms'])} (RMs run at once; {_f(sc['ensemble_sum_of_rms_ms'])} "
        f"summed: {per}). LASeR / ensemble: {_f(sc['laser_vs_ensemble'], 2)}.",
    ]


def _targets(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| target | measured | goal | met |",
        "|---|---:|---|---|",
    ]
    for t in results["targets"]:
        unit = " ms" if "ms" in t["goal"] else "x"
        lines.append(
            f"| {t['target']} | {_f(t['measured'], 2)}{unit} | {t['goal']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return lines


def _overhead(results: dict[str, Any]) -> list[str]:
    o = results["overhead"]
    return [
        "",
        f"Server overhead (client wall time minus generation and scoring), {o['requests']} "
        f"sequential requests from a client in another process: p50 {_f(o['p50_ms'], 1)} ms, "
        f"p99 {_f(o['p99_ms'], 1)} ms. Parts (p50): "
        + ", ".join(f"{k} {_f(v, 2)} ms" for k, v in o["parts_p50_ms"].items())
        + ".",
    ]


def _concurrency(results: dict[str, Any]) -> list[str]:
    """Throughput and latency per concurrency, then what the server spent them on."""
    lines = [
        "",
        "| concurrency | requests | server req/s | p50 (ms) | p90 (ms) | p99 (ms) | refused "
        "| engine alone req/s | server / engine |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["concurrency"]:
        s, e = row["server"], row["engine"]
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {_f(s['rps'], 2)} | {_f(s['p50_ms'])} | "
            f"{_f(s['p90_ms'])} | {_f(s['p99_ms'])} | {s['refused']} | {_f(e['rps'], 2)} | "
            f"{_f(row['throughput_vs_engine'], 2)}x |"
        )
    lines.append("")
    for row in results["concurrency"]:
        if "rm_picked" in row:
            lines.append(
                f"- concurrency {row['concurrency']}: RMs picked "
                + ", ".join(f"{k} {v}" for k, v in row["rm_picked"].items())
                + f"; per request (mean): scoring {_f(row['score_ms_mean'])} ms, store "
                f"{_f(row['store_ms_mean'], 1)} ms, generation {_f(row['generate_ms_mean'])} ms"
            )
    return lines


def _n_scaling(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| n | server p50 (ms) | engine alone p50 (ms) | server / engine | server vs n=1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["n_scaling"]:
        lines.append(
            f"| {row['n']} | {_f(row['server_p50_ms'])} | {_f(row['engine_p50_ms'])} | "
            f"{_f(row['vs_floor'], 2)}x | {_f(row['server_vs_n1'], 2)}x |"
        )
    return lines


def _doc_scaling(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| document (target tokens) | document tokens | prompt tokens "
        "| NEW document: server p50 (ms) | engine alone p50 (ms) | server / engine "
        "| same document again (cached): server (ms) | engine alone (ms) | RM picked "
        "| loglik RM on the samples: as served / from scratch (ms) | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["doc_scaling"]:
        ll = (
            f"{_f(row['loglik_reuse_ms'])} / {_f(row['loglik_scratch_ms'])} | "
            f"{_f(row['loglik_speedup'], 2)}x"
            if "loglik_speedup" in row
            else "- | -"
        )
        lines.append(
            f"| {row['target_tokens']} | {row['document_tokens']} | {row['prompt_tokens']} | "
            f"{_f(row['server_p50_ms'])} | {_f(row['engine_p50_ms'])} | {_f(row['vs_floor'], 2)}x "
            f"| {_f(row['server_cached_p50_ms'])} | {_f(row['engine_cached_p50_ms'])} "
            f"| {', '.join(row['rm_picked'])} | {ll} |"
        )
    return lines


def _loglik_sources(results: dict[str, Any]) -> list[str]:
    src = results.get("loglik_sources")
    if not src or src["share_from_generation"] is None:
        return []
    return [
        "",
        f"Likelihood scoring over the whole run: {src['from_generation']} candidates from the "
        f"logprobs kept while sampling ({src['share_from_generation']:.0%}), "
        f"{src['engine_passes']} by an engine pass (texts not sampled by this engine, and the "
        "from-scratch comparison rows).",
    ]


def _in_process(results: dict[str, Any]) -> list[str]:
    o = results.get("overhead_in_process_client")
    if not o:
        return []
    return [
        "",
        f"The same from the bench's own client, which shares the server's process and event "
        f"loop ({o['requests']} requests of the rounds above): p50 {_f(o['p50_ms'], 1)} ms, "
        f"p99 {_f(o['p99_ms'], 1)} ms.",
    ]
