"""Export an architecture (spec or torch module) to ONNX and TFLite, verified and content-addressed.

One job: turn a spec into a file a device can run, and refuse to publish a file that does not
compute what the torch module computes.

Formats and how they are made
-----------------------------
``onnx``
    ``torch.onnx.export`` with the legacy TorchScript exporter (``dynamo=False``; the default: it
    was 1.4-6x faster than the dynamo exporter in ``benchmarks/export_speed.py`` and needs no
    ``onnxscript``), opset
    :data:`DEFAULT_OPSET`, one self-contained file (no ``.onnx.data``), fixed batch 1, input
    ``input``, output ``logits``; it must pass ``onnx.checker.check_model``. ``exporter="dynamo"``
    selects the dynamo exporter (``external_data=False``) where ``onnxscript`` is installed.
``tflite``
    float32 through ``litert_torch.convert`` (signature ``serving_default`` with input ``input``
    and output ``logits``; NCHW input like the torch module). ``quantize="int8"`` then applies
    static int8 post-training quantization with ai-edge-quantizer (``recipe.static_wi8_ai8``: int8
    weights per channel, int8 activations per tensor, int8 model input and output) calibrated on
    seeded random normal inputs. (litert-torch's own PT2E route failed on models with channel
    concatenation in litert-torch 0.10: "Attempting to convert non-NHWC compatible node to NHWC:
    dequantize_per_tensor".)

Verification
------------
Every export is run on a seeded random normal input (batch 1) by the runtime a device will use
(onnxruntime, the ``ai_edge_litert`` interpreter) and compared with the torch module in ``eval``
mode: ``max_abs_err = max|a - b|`` and ``max_rel_err = max|a - b| / max(max|b|, 1e-12)`` (relative
to the largest reference logit, so it is robust to logits near zero). An artifact whose
``max_rel_err`` exceeds the tolerance (:data:`DEFAULT_TOLERANCE`: 1e-4 for float32, 0.15 for int8,
where the error is quantization noise rather than an exporter bug) is refused with
:class:`ExportError`.

Files, sidecars and the cache
-----------------------------
Artifacts are named ``<spec_id>.onnx``, ``<spec_id>.tflite`` and ``<spec_id>.int8.tflite`` in the
output directory. Each has a JSON sidecar ``<artifact name>.json`` (one per artifact rather than
one shared manifest, so parallel or interrupted exports never race on, or corrupt, a shared file;
:func:`read_manifest` gathers them) recording the spec id, format, quantization, sha256, size,
exporter and toolchain versions, opset, errors, tolerance and export seconds.

Trained weights
---------------
``weights=`` (the state dict ``nnflash train`` stores, written by ``torch.save``) is loaded, strictly,
into the spec's module before it is exported and verified, so the file computes what the trained
network computes; a state dict that does not fit the spec is an :class:`ExportError`. The weights'
sha256 is recorded in the sidecar (``weights_sha256``) and is part of the cache key.

The cache key is the sha256 of the spec's canonical JSON, the format, the quantization, the
exporter, opset, verification settings, the weights' sha256 (if any) and the versions of every tool
that touches the file. An
export whose sidecar holds the same key, and whose file still has the recorded sha256, is a cache
hit and is not rebuilt. Files are written to a temporary directory inside the output directory and
renamed into place (artifact first, then sidecar) so that a failed or interrupted export never
leaves a half file under an artifact's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnflash.models.errors import ExportError
from nnflash_agent.fileio import atomic_write_text, sha256_file

__all__ = [
    "Artifact",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportError",
    "ExportOutcome",
    "FORMATS",
    "QUANTIZATIONS",
    "artifact_name",
    "export_many",
    "export_module",
    "export_spec",
    "load_weights",
    "read_manifest",
    "relative_error",
    "toolchain_versions",
]

FORMATS = ("onnx", "tflite")
QUANTIZATIONS = (None, "int8")
ONNX_EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = 17
#: Largest accepted ``max_rel_err`` per quantization (None = float32).
DEFAULT_TOLERANCE: Mapping[Optional[str], float] = {None: 1e-4, "int8": 0.15}
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
SIGNATURE_KEY = "serving_default"
#: Bumped when the way files are produced changes, so old cache entries are not trusted.
EXPORT_FORMAT_VERSION = 1
CALIBRATION_SAMPLES = 32

ProgressCallback = Callable[[int, int, "ExportOutcome"], None]


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A verified exported model file and what is known about it."""

    spec_id: str
    format: str
    quantization: Optional[str]
    path: Path
    sha256: str
    size: int
    cached: bool
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    exporter: str
    opset: Optional[int]
    versions: tuple[tuple[str, str], ...]
    export_s: float
    cache_key: str
    input_shape: tuple[int, ...]
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    #: sha256 of the trained weights (a ``torch.save``d state dict) loaded into the module before
    #: export; None: the module's seeded initialization
    weights_sha256: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = self.path.name
        d["versions"] = dict(self.versions)
        d["input_shape"] = list(self.input_shape)
        d.pop("cached")
        return d


@dataclasses.dataclass(frozen=True)
class ExportOutcome:
    """One (spec, format) result of :func:`export_many`: an artifact or an error message."""

    spec_id: str
    format: str
    quantization: Optional[str]
    artifact: Optional[Artifact]
    error: Optional[str]

    @property
    def ok(self) -> bool:
        return self.artifact is not None


# --------------------------------------------------------------------------------------------------
# small helpers


def artifact_name(spec_id: str, fmt: str, quantize: Optional[str] = None) -> str:
    """``<spec_id>.onnx``, ``<spec_id>.tflite`` or ``<spec_id>.int8.tflite``."""
    _check_format(fmt, quantize)
    return f"{spec_id}.{quantize}.{fmt}" if quantize else f"{spec_id}.{fmt}"


def _check_format(fmt: str, quantize: Optional[str]) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize: unknown quantization {quantize!r} (expected None or 'int8')")
    if quantize is not None and fmt != "tflite":
        raise ExportError(f"quantize: {quantize} quantization is only supported for tflite, not {fmt}")


def relative_error(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``(max|a-b|, max|a-b| / max(max|b|, 1e-12))`` in float64."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"output shape {a.shape} differs from the torch module's {b.shape}")
    if not np.all(np.isfinite(a)):
        return float("inf"), float("inf")
    max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return max_abs, max_abs / max(scale, 1e-12)


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def toolchain_versions(fmt: str, quantize: Optional[str] = None) -> dict[str, str]:
    """Versions of every tool that makes or checks a file of this format (part of the cache key)."""
    import torch

    versions = {"torch": torch.__version__, "numpy": np.__version__}
    if fmt == "onnx":
        versions.update(onnx=_dist_version("onnx"), onnxruntime=_dist_version("onnxruntime"))
    else:
        versions.update(
            **{"litert-torch": _dist_version("litert-torch")},
            **{"ai-edge-litert": _dist_version("ai-edge-litert")},
        )
        if quantize:
            versions["ai-edge-quantizer"] = _dist_version("ai-edge-quantizer")
    return versions


def _spec_canonical(spec: Any) -> str:
    for attr in ("canonical_json", "to_json"):
        fn = getattr(spec, attr, None)
        if callable(fn):
            return str(fn())
    to_dict = getattr(spec, "to_dict", None)
    if callable(to_dict):
        return json.dumps(to_dict(), sort_keys=True, separators=(",", ":"))
    return json.dumps({"spec_id": str(spec.spec_id)})


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_quiet_saved: dict[str, Any] = {}


def _quiet_enter() -> None:
    global _quiet_depth
    with _QUIET_LOCK:
        _quiet_depth += 1
        if _quiet_depth > 1:
            return
        env = {"LITERT_TORCH_SHOW_PROGRESS": "n", "TQDM_DISABLE": "1"}
        _quiet_saved["env"] = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        _quiet_saved["fd"] = None
        try:
            sys.stderr.flush()
            sink = tempfile.TemporaryFile()
            saved_fd = os.dup(2)
            os.dup2(sink.fileno(), 2)
            _quiet_saved.update(fd=saved_fd, sink=sink)
        except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): env only
            pass


def _quiet_exit() -> None:
    global _quiet_depth
    with _QUIET_LOCK:
        _quiet_depth -= 1
        if _quiet_depth > 0:
            return
        saved_fd = _quiet_saved.pop("fd", None)
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            _quiet_saved.pop("sink").close()
        for k, v in _quiet_saved.pop("env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the converters: progress bars, Python warnings and their log lines on fd 2.

    fd 2 is pointed at a discarded file while a conversion runs (reference-counted, so concurrent
    exports in several threads nest correctly); stdout is left alone. Anything else written to
    stderr meanwhile (a progress bar on stderr, another thread's log) is lost for those seconds.
    """
    _quiet_enter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet_exit()


def _example_input(input_shape: Sequence[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, *input_shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# ONNX


def _export_onnx(module: Any, x: Any, path: Path, *, opset: int, exporter: str) -> None:
    import torch

    with _quiet(), torch.no_grad():
        if exporter == "legacy":
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
        elif exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError as exc:
                raise ExportError(
                    "exporter: the dynamo ONNX exporter needs onnxscript (pip install onnxscript)"
                ) from exc
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=False,
            )
        else:
            raise ExportError(f"exporter: unknown ONNX exporter {exporter!r}")
    import onnx

    if not path.is_file():
        raise ExportError(f"the {exporter} ONNX exporter wrote no file")
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    if leftovers:
        raise ExportError(f"the ONNX export is not self-contained (also wrote {leftovers})")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises several types
        raise ExportError(f"onnx.checker rejected the export: {exc}") from exc


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(out)


# --------------------------------------------------------------------------------------------------
# TFLite


def _named_io(module: Any) -> Any:
    """Wrap a module so the TFLite signature has input ``input`` and output ``logits``."""
    import torch

    class _NamedIO(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
            return {OUTPUT_NAME: self.inner(input)}

    return _NamedIO(module).eval()


def _export_tflite(
    module: Any,
    x: Any,
    path: Path,
    *,
    quantize: Optional[str],
    input_shape: Sequence[int],
    seed: int,
) -> None:
    with _quiet():
        import litert_torch

        edge = litert_torch.convert(_named_io(module), sample_kwargs={INPUT_NAME: x})
        if quantize is None:
            edge.export(str(path))
            return
        float_path = path.with_name(path.name + ".float")
        edge.export(str(float_path))
        _quantize_int8(float_path, path, input_shape=input_shape, seed=seed)
        float_path.unlink()


def _quantize_int8(float_path: Path, path: Path, *, input_shape: Sequence[int], seed: int) -> None:
    from ai_edge_quantizer import quantizer, recipe

    rng = np.random.default_rng([seed, 0x1A7])
    calibration = {
        SIGNATURE_KEY: [
            {INPUT_NAME: rng.standard_normal((1, *input_shape)).astype(np.float32)} for _ in range(CALIBRATION_SAMPLES)
        ]
    }
    qt = quantizer.Quantizer(str(float_path), recipe.static_wi8_ai8())
    result = qt.calibrate(calibration, num_threads=1)
    qt.quantize(result, enable_progress_report=False).export_model(str(path), overwrite=True)


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    outs = interp.get_output_details()
    if len(outs) != 1:
        raise ExportError(f"the TFLite model has {len(outs)} outputs, expected 1")
    out = outs[0]
    value: np.ndarray = x
    if inp["dtype"] != np.float32:  # int8 model: quantize the input with its own parameters
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        value = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], value)
    interp.invoke()
    y = np.asarray(interp.get_tensor(out["index"]))
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


# --------------------------------------------------------------------------------------------------
# public API


def export_module(
    module: Any,
    input_shape: Sequence[int],
    fmt: str,
    path: str | os.PathLike[str],
    *,
    quantize: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "legacy",
    tolerance: Optional[float] = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Export ``module`` (input ``(1, *input_shape)``) to ``path``, verify it, return its errors.

    The file appears at ``path`` only if it passed every check; otherwise :class:`ExportError` is
    raised and nothing is left behind. Returns ``(max_abs_err, max_rel_err)``.
    """
    import torch

    _check_format(fmt, quantize)
    tol = DEFAULT_TOLERANCE[quantize] if tolerance is None else float(tolerance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    x_np = _example_input(input_shape, seed)
    x = torch.from_numpy(x_np)
    with torch.no_grad():
        ref = module(x)
    if not isinstance(ref, torch.Tensor):
        raise ExportError("the module must return a single tensor (the logits)")
    ref_np = ref.detach().cpu().numpy()

    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=".export-"))
    try:
        tmp_path = tmp_dir / path.name
        try:
            if fmt == "onnx":
                _export_onnx(module, x, tmp_path, opset=opset, exporter=exporter)
                got = _run_onnx(tmp_path, x_np)
            else:
                _export_tflite(module, x, tmp_path, quantize=quantize, input_shape=input_shape, seed=seed)
                got = _run_tflite(tmp_path, x_np)
        except ExportError:
            raise
        except Exception as exc:  # converters raise anything; report it as an export failure
            raise ExportError(f"{fmt} export failed: {type(exc).__name__}: {exc}") from exc
        max_abs, max_rel = relative_error(got.reshape(ref_np.shape), ref_np)
        if not max_rel <= tol:
            kind = f"{quantize} {fmt}" if quantize else fmt
            raise ExportError(
                f"{kind} export disagrees with torch: max relative error {max_rel:.3g} "
                f"(max abs {max_abs:.3g}) exceeds the tolerance {tol:.3g}; artifact not published"
            )
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return max_abs, max_rel


def _cache_key(
    spec: Any,
    fmt: str,
    quantize: Optional[str],
    *,
    exporter: str,
    opset: int,
    seed: int,
    tolerance: float,
    versions: Mapping[str, str],
    weights_sha256: Optional[str] = None,
) -> str:
    payload = {
        "spec": _spec_canonical(spec),
        "format": fmt,
        "quantization": quantize,
        "exporter": exporter,
        "opset": opset if fmt == "onnx" else None,
        "seed": seed,
        "tolerance": tolerance,
        "versions": dict(versions),
        "export_format_version": EXPORT_FORMAT_VERSION,
    }
    if weights_sha256 is not None:  # absent otherwise, so existing cache entries stay valid
        payload["weights_sha256"] = weights_sha256
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _exporter_name(fmt: str, quantize: Optional[str], exporter: str) -> str:
    if fmt == "onnx":
        return f"torch.onnx.export[{exporter}]"
    return "litert_torch.convert" + ("+ai_edge_quantizer.static_wi8_ai8" if quantize else "")


def _load_cached(path: Path, sidecar: Path, cache_key: str) -> Optional[Artifact]:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if meta.get("cache_key") != cache_key or not path.is_file():
            return None
        if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            return None
        return Artifact(
            spec_id=meta["spec_id"],
            format=meta["format"],
            quantization=meta["quantization"],
            path=path,
            sha256=meta["sha256"],
            size=int(meta["size"]),
            cached=True,
            max_abs_err=float(meta["max_abs_err"]),
            max_rel_err=float(meta["max_rel_err"]),
            tolerance=float(meta["tolerance"]),
            exporter=meta["exporter"],
            opset=meta["opset"],
            versions=tuple(sorted(meta["versions"].items())),
            export_s=float(meta["export_s"]),
            cache_key=meta["cache_key"],
            input_shape=tuple(meta["input_shape"]),
            input_name=meta.get("input_name", INPUT_NAME),
            output_name=meta.get("output_name", OUTPUT_NAME),
            weights_sha256=meta.get("weights_sha256"),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _default_build(spec: Any) -> Any:
    from nnflash.models.builder import build_module

    return build_module(spec)


def load_weights(module: Any, weights: str | os.PathLike[str], spec_id: str) -> Any:
    """Load a state dict saved by ``torch.save`` (what ``nnflash train`` stores) into ``module``,
    strictly; returns the module. Clear :class:`ExportError` for a missing, unreadable or foreign file."""
    import torch

    p = Path(weights)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"weights {p}: no such file") from None
    except Exception as exc:
        raise ExportError(f"weights {p}: cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping):
        raise ExportError(f"weights {p}: not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ExportError(
            f"weights {p} do not fit spec {spec_id}: {first[1].strip() if len(first) > 1 else first[0]}"
        ) from None
    return module


def _as_spec(spec: Any) -> Any:
    if hasattr(spec, "spec_id") and hasattr(spec, "input_shape"):
        return spec
    from nnflash.models.spec import parse_spec

    return parse_spec(spec)


def export_spec(
    spec: Any,
    fmt: str,
    out_dir: str | os.PathLike[str],
    *,
    quantize: Optional[str] = None,
    build: Optional[Callable[[Any], Any]] = None,
    module: Any = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "legacy",
    tolerance: Optional[float] = None,
    seed: int = 0,
    force: bool = False,
    weights: str | os.PathLike[str] | None = None,
) -> Artifact:
    """Export ``spec`` to ``out_dir/<spec_id>.<fmt>`` (verified), or return the cached artifact.

    ``spec`` is a spec object (anything with ``spec_id`` and ``input_shape``) or a spec dict / JSON
    text. The module comes from ``module`` if given, else ``build(spec)`` (default
    ``models.builder.build_module``); it is built only on a cache miss. ``force`` skips the cache.
    ``weights``: a trained state dict to load into the module first (see the module docstring).
    """
    spec = _as_spec(spec)
    _check_format(fmt, quantize)
    if fmt == "onnx" and exporter not in ONNX_EXPORTERS:
        raise ExportError(f"exporter: unknown ONNX exporter {exporter!r}")
    tol = DEFAULT_TOLERANCE[quantize] if tolerance is None else float(tolerance)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_id = str(spec.spec_id)
    input_shape = tuple(int(d) for d in spec.input_shape)
    path = out / artifact_name(spec_id, fmt, quantize)
    sidecar = path.with_name(path.name + ".json")
    versions = toolchain_versions(fmt, quantize)
    ex = exporter if fmt == "onnx" else "litert"
    weights_sha = None
    if weights is not None:
        if not Path(weights).is_file():
            raise ExportError(f"weights {weights}: no such file")
        weights_sha = sha256_file(Path(weights))
    key = _cache_key(
        spec,
        fmt,
        quantize,
        exporter=ex,
        opset=opset,
        seed=seed,
        tolerance=tol,
        versions=versions,
        weights_sha256=weights_sha,
    )
    if not force:
        hit = _load_cached(path, sidecar, key)
        if hit is not None:
            return hit

    t0 = time.perf_counter()
    if module is None:
        module = (build or _default_build)(spec)
    if weights is not None:
        module = load_weights(module, weights, spec_id)
    max_abs, max_rel = export_module(
        module,
        input_shape,
        fmt,
        path,
        quantize=quantize,
        opset=opset,
        exporter=exporter,
        tolerance=tol,
        seed=seed,
    )
    export_s = time.perf_counter() - t0
    artifact = Artifact(
        spec_id=spec_id,
        format=fmt,
        quantization=quantize,
        path=path,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        cached=False,
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        tolerance=tol,
        exporter=_exporter_name(fmt, quantize, exporter),
        opset=opset if fmt == "onnx" else None,
        versions=tuple(sorted(versions.items())),
        export_s=export_s,
        cache_key=key,
        input_shape=input_shape,
        weights_sha256=weights_sha,
    )
    meta = artifact.to_dict()
    meta["family"] = getattr(spec, "family", None)
    meta["created_unix"] = time.time()
    atomic_write_text(sidecar, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return artifact


def export_many(
    specs: Iterable[Any],
    formats: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    quantize: Optional[str] = None,
    build: Optional[Callable[[Any], Any]] = None,
    progress: Optional[ProgressCallback] = None,
    keep_going: bool = True,
    weights: Optional[Mapping[str, str | os.PathLike[str]]] = None,
    **kwargs: Any,
) -> list[ExportOutcome]:
    """Export every spec to every format; one :class:`ExportOutcome` per (spec, format).

    ``weights`` maps spec ids to trained state dicts (see :func:`export_spec`); specs not in it are
    exported with their seeded initialization.

    ``quantize`` applies to the tflite format only (onnx stays float32). Each spec's module is built
    at most once (only on a cache miss). ``progress(done, total, outcome)`` is called after each
    export. With ``keep_going`` (default) a failed export becomes an outcome with ``error`` set;
    otherwise the first :class:`ExportError` is raised.
    """
    spec_list = [_as_spec(s) for s in specs]
    formats = list(formats)
    for fmt in formats:
        _check_format(fmt, quantize if fmt == "tflite" else None)
    builder = build or _default_build
    total = len(spec_list) * len(formats)
    done = 0
    outcomes: list[ExportOutcome] = []
    for spec in spec_list:
        built: list[Any] = []

        def lazy_build(s: Any, _cache: list[Any] = built) -> Any:
            if not _cache:
                _cache.append(builder(s))
            return _cache[0]

        for fmt in formats:
            q = quantize if fmt == "tflite" else None
            try:
                w = (weights or {}).get(str(spec.spec_id))
                art = export_spec(spec, fmt, out_dir, quantize=q, build=lazy_build, weights=w, **kwargs)
                outcome = ExportOutcome(str(spec.spec_id), fmt, q, art, None)
            except ExportError as exc:
                if not keep_going:
                    raise
                outcome = ExportOutcome(str(spec.spec_id), fmt, q, None, str(exc))
            outcomes.append(outcome)
            done += 1
            if progress is not None:
                progress(done, total, outcome)
    return outcomes


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The sidecars of the artifacts in ``out_dir``, by file name (unreadable ones skipped)."""
    entries = []
    for sidecar in sorted(Path(out_dir).glob("*.json")):
        if sidecar.name.startswith("."):
            continue
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "sha256" in meta and "cache_key" in meta:
            entries.append(meta)
    return entries
