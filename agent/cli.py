"""``nnflash-agent``: serve | connect | info | measure | selftest (argparse; stays light).

Bad input gives one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, NoReturn, Optional

from nnflash_agent import __version__
from nnflash_agent.runners import RUNTIME_FORMATS, RUNTIMES

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnflash-agent", description="nnflash on-device measurement agent")
    p.add_argument("--version", action="version", version=f"nnflash-agent {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    s = sub.add_parser("serve", help="speak the JSON-lines protocol on stdin/stdout")
    s.add_argument("--store", help="artifact store directory (default: XDG cache)")
    s.add_argument("--journal", help="journal file (default: XDG cache)")
    s.add_argument(
        "--prespawn",
        action="store_true",
        help="keep a spare measurement worker started (faster measure turn-around, more memory)",
    )
    s.add_argument(
        "--socket",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="run as a long-running agent on this UNIX socket (default ~/.cache/nnflash-agent/agent.sock), "
        "one session at a time; the controller reaches it with 'nnflash-agent connect'",
    )

    c = sub.add_parser("connect", help="bridge stdin/stdout to a long-running agent (serve --socket)")
    c.add_argument("--socket", default=None, metavar="PATH", help="its socket (default as for serve --socket)")
    c.add_argument(
        "--fallback",
        action="store_true",
        help="when no long-running agent answers, run 'serve' in this process instead",
    )

    i = sub.add_parser("info", help="print device facts and state")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    m = sub.add_parser("measure", help="measure one model file")
    m.add_argument("model", help="path to a .onnx or .tflite file")
    m.add_argument("--runtime", required=True, choices=list(RUNTIMES))
    m.add_argument("--threads", type=int)
    m.add_argument("--affinity", help="comma-separated CPU ids, e.g. 0,1")
    m.add_argument("--energy", default="none", help="meter: none, estimate, rapl, ina219, ...")
    m.add_argument("--energy-option", action="append", default=[], metavar="KEY=VALUE")
    m.add_argument("--repeat", type=int)
    m.add_argument("--number", type=int)
    m.add_argument("--min-repeat-ms", type=float)
    m.add_argument("--fixed-runs", type=int)
    m.add_argument("--warmup-runs", type=int)
    m.add_argument("--warmup-s", type=float)
    m.add_argument("--seed", type=int)
    m.add_argument("--thermal-gate-c", type=float)
    m.add_argument("--timeout-s", type=float)
    m.add_argument("--no-isolate", action="store_true", help="run in this process")
    m.add_argument("--json", action="store_true", help="print the full record as JSON")

    t = sub.add_parser("selftest", help="measure the bundled tiny model with each runtime available")
    t.add_argument("--json", action="store_true", help="one JSON object: per runtime its status and figures")
    return p


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _measure_options(ns: argparse.Namespace) -> Dict[str, Any]:
    raw: Dict[str, Any] = {}
    for key in (
        "threads",
        "repeat",
        "number",
        "min_repeat_ms",
        "fixed_runs",
        "warmup_runs",
        "warmup_s",
        "seed",
        "thermal_gate_c",
        "timeout_s",
    ):
        value = getattr(ns, key)
        if value is not None:
            raw[key] = value
    if ns.affinity:
        try:
            raw["affinity"] = [int(c) for c in ns.affinity.split(",") if c.strip()]
        except ValueError:
            raise UsageError(f"--affinity: expected CPU ids like 0,1, got {ns.affinity!r}") from None
    raw["energy"] = ns.energy
    eopts = {}
    for item in ns.energy_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--energy-option: expected KEY=VALUE, got {item!r}")
        eopts[key] = _parse_value(value)
    if eopts:
        raw["energy_options"] = eopts
    raw["isolate"] = not ns.no_isolate
    return raw


def _measure_file(path: str, runtime: str, raw: Dict[str, Any]) -> Dict[str, Any]:
    """Measure a model file; returns a response-shaped dict {status, error, result}."""
    from nnflash_agent.measure import parse_options
    from nnflash_agent.protocol import ProtocolError
    from nnflash_agent.worker import run_isolated, run_job

    try:
        opts = parse_options(raw)
    except ProtocolError as exc:
        raise UsageError(exc.message) from None
    job = {"model_path": os.path.abspath(path), "runtime": runtime, "options": opts}
    if opts["isolate"]:
        status, error, result = run_isolated(job, opts["timeout_s"])
        return {"status": status, "error": error, "result": result}
    return run_job(job)


def _fmt_state(state: Optional[Dict[str, Any]]) -> str:
    if not state:
        return "n/a"
    parts = []
    if state.get("governor"):
        parts.append(f"governor={state['governor']}")
    freqs = [p.get("cur_khz") for p in state.get("cpufreq") or [] if p.get("cur_khz")]
    if freqs:
        parts.append("cur_mhz=" + "/".join(str(f // 1000) for f in freqs))
    if state.get("arm_clock_hz"):
        parts.append(f"arm_clock_mhz={state['arm_clock_hz'] / 1e6:.0f}")
    if state.get("temp_c") is not None:
        parts.append(f"temp_c={state['temp_c']:.1f}")
    if state.get("throttled"):
        parts.append(f"throttled={state['throttled']['hex']}")
    if state.get("loadavg"):
        parts.append("load=" + ",".join(f"{x:.2f}" for x in state["loadavg"]))
    return " ".join(parts) or "n/a"


def _print_record(r: Dict[str, Any]) -> None:
    print(f"runtime            {r['runtime']} {r.get('runtime_version') or ''}")
    print(f"threads            {r.get('threads') if r.get('threads') is not None else 'default'}")
    print(f"load_ms            {r['load_ms']:.3f}")
    print(f"first_inference_ms {r['first_inference_ms']:.3f}")
    if r.get("latency_ms") is not None:
        print(f"latency_ms         {r['latency_ms']:.4f} (median of the undisturbed repeats)")
    print(f"latency_ms_median  {r['latency_ms_median']:.4f}")
    d = r.get("disturbance") or {}
    if d.get("repeat_disturbed") is not None:
        seen = d.get("wait_share_max_seen")
        longest = f" (longest wait, summed over threads: {seen:.1%} of a repeat)" if seen is not None else ""
        print(f"disturbed repeats  {d.get('disturbed_repeats')} of {len(d['repeat_disturbed'])}{longest}")
    lo, hi = r["latency_ms_ci95"]
    print(f"latency_ms_ci95    [{lo:.4f}, {hi:.4f}]")
    print(f"latency_ms_mean    {r['latency_ms_mean']:.4f}")
    print(f"latency_ms_p90     {r['latency_ms_p90']:.4f}")
    print(f"samples            {len(r['samples_ms'])} (number={r['number']} calls each)")
    print("samples_ms         " + " ".join(f"{x:.4f}" for x in r["samples_ms"]))
    print(f"state_before       {_fmt_state(r.get('state_before'))}")
    print(f"state_after        {_fmt_state(r.get('state_after'))}")
    print(f"flags              {', '.join(r.get('flags') or []) or '-'}")
    e = r.get("energy")
    if e:
        if e.get("energy_mj_per_inference") is not None:
            est = " (estimated)" if e.get("estimated") else ""
            above = e.get("energy_mj_per_inference_above_idle")
            above_s = f", above idle {above:.4f} mJ" if above is not None else ""
            print(
                f"energy             {e['energy_mj_per_inference']:.4f} mJ/inference{above_s}"
                f" [{e['meter']}{est}, {e['samples']} samples, "
                f"{(e.get('sample_rate_hz') or 0):.1f} Hz]"
            )
        else:
            print(f"energy             failed: {e.get('error')}")


def _cmd_info(ns: argparse.Namespace) -> int:
    from nnflash_agent.telemetry import Telemetry

    tel = Telemetry()
    data = {"facts": tel.facts(), "state": tel.state()}
    if ns.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    f = data["facts"]
    print(f"agent        {f['agent_version']}")
    print(f"cpu          {f['cpu_model']} ({f['cpu_count']} cpus, {f['machine']})")
    if f.get("board_model"):
        print(f"board        {f['board_model']}")
    print(f"os           {f['os'] or f['system']} ({f['release']}), {f['libc']}")
    print(f"python       {f['python']}")
    mem = f.get("mem_total_bytes")
    print(f"memory       {mem / 2**20:.0f} MiB" if mem else "memory       n/a")
    rts = f.get("runtimes") or {}
    print("runtimes     " + (", ".join(f"{k} {v}" for k, v in rts.items()) or "none"))
    print(f"state        {_fmt_state(data['state'])}")
    return EXIT_OK


def _cmd_measure(ns: argparse.Namespace) -> int:
    from nnflash_agent.protocol import OK

    path = ns.model
    if not os.path.isfile(path):
        raise UsageError(f"no such model file: {path}")
    ext = os.path.splitext(path)[1].lower()
    want = "." + RUNTIME_FORMATS[ns.runtime]
    if ext != want:
        raise UsageError(f"--runtime {ns.runtime} needs a {want} file, got {path}")
    answer = _measure_file(path, ns.runtime, _measure_options(ns))
    if ns.json:
        print(json.dumps(answer, indent=2))
    elif isinstance(answer.get("result"), dict):  # ok, or disturbed (the figures come with it)
        _print_record(answer["result"])
    if answer["status"] != OK:
        sys.stderr.write(f"nnflash-agent: measure failed ({answer['status']}): {answer['error']}\n")
        return EXIT_FAIL
    return EXIT_OK


def selftest_models() -> Dict[str, str]:
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    return {
        "onnxruntime": os.path.join(data, "selftest.onnx"),
        "tflite": os.path.join(data, "selftest.tflite"),
    }


def _cmd_selftest(ns: argparse.Namespace) -> int:
    """Measure the bundled model with each runtime; passes when at least one runtime works.

    With ``--json`` the report is one object: ``{"agent_version", "python", "passed", "runtimes":
    {name: {"status": "ok" | "not_installed" | an error code, "error", "runtime_version",
    "latency_ms_median", "load_ms"}}}`` (the installer checks the runtimes it installed)."""
    from nnflash_agent.protocol import OK
    from nnflash_agent.telemetry import runtime_versions

    available = runtime_versions()
    report: Dict[str, Any] = {"agent_version": __version__, "python": sys.version.split()[0], "runtimes": {}}
    if not ns.json:
        print(f"nnflash-agent {__version__} selftest, python {report['python']}")
    working: List[str] = []
    has = {
        "onnxruntime": "onnxruntime" in available,
        "tflite": "ai_edge_litert" in available or "tflite_runtime" in available,
    }
    for runtime, model in selftest_models().items():
        entry: Dict[str, Any] = {"status": "not_installed", "error": None}
        if not has[runtime]:
            line = "not installed"
        elif not os.path.isfile(model):
            entry = {"status": "missing_artifact", "error": f"bundled model missing ({model})"}
            line = f"FAIL: {entry['error']}"
        else:
            # whether the runtime works, not whether the device is quiet: the gate only records
            raw = {"repeat": 10, "min_repeat_ms": 5.0, "warmup_s": 0.1, "timeout_s": 600.0, "disturbed_share_max": None}
            answer = _measure_file(model, runtime, raw)
            if answer["status"] == OK:
                r = answer["result"]
                working.append(runtime)
                entry = {
                    "status": OK,
                    "error": None,
                    "runtime_version": r.get("runtime_version"),
                    "latency_ms_median": r["latency_ms_median"],
                    "load_ms": r["load_ms"],
                }
                line = (
                    f"ok   {r.get('runtime_version')}: median {r['latency_ms_median']:.4f} ms, "
                    f"load {r['load_ms']:.1f} ms"
                )
            else:
                entry = {"status": answer["status"], "error": answer["error"]}
                line = f"FAIL ({answer['status']}): {answer['error']}"
        report["runtimes"][runtime] = entry
        if not ns.json:
            print(f"  {runtime:12s} {line}")
    report["passed"] = bool(working)
    if ns.json:
        print(json.dumps(report))
    elif working:
        print(f"selftest passed: {', '.join(working)} working")
    else:
        print("selftest failed: no runtime works (install onnxruntime or ai-edge-litert)")
    return EXIT_OK if working else EXIT_FAIL


def _cmd_serve(ns: argparse.Namespace) -> int:
    from nnflash_agent.serve import Agent, serve
    from nnflash_agent.store import default_journal_path, default_store_dir

    try:
        agent = Agent(
            ns.store or default_store_dir(),
            ns.journal or default_journal_path(),
            prespawn=ns.prespawn,
        )
    except OSError as exc:
        raise UsageError(f"cannot use the store: {exc}") from None
    if ns.socket is not None:
        from nnflash_agent.daemon import DaemonError, default_socket_path, serve_socket

        try:
            return serve_socket(agent, ns.socket or default_socket_path())
        except (DaemonError, OSError) as exc:
            agent.close()
            raise UsageError(f"cannot serve on the socket: {exc}") from None
    return serve(agent)


def _cmd_connect(ns: argparse.Namespace) -> int:
    from nnflash_agent.daemon import connect, default_socket_path

    path = ns.socket or default_socket_path()
    try:
        return connect(path)
    except OSError as exc:
        if not ns.fallback:
            raise UsageError(f"no long-running agent answers on {path} ({exc.strerror or exc})") from None
    sys.stderr.write(f"nnflash-agent: no long-running agent on {path}; serving on demand\n")
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "nnflash_agent.cli", "serve"])
    return EXIT_FAIL  # not reached


def main(argv: Optional[List[str]] = None) -> int:
    parser = _build_parser()
    try:
        ns = parser.parse_args(argv)
        if ns.command is None:
            raise UsageError("a command is needed: serve, connect, info, measure or selftest (see --help)")
        handler = {
            "serve": _cmd_serve,
            "connect": _cmd_connect,
            "info": _cmd_info,
            "measure": _cmd_measure,
            "selftest": _cmd_selftest,
        }[ns.command]
        return handler(ns)
    except UsageError as exc:
        sys.stderr.write(f"nnflash-agent: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("nnflash-agent: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
