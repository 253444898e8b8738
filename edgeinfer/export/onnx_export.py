"""torch module -> checked, simplified ONNX file with a dynamic batch: ``onnx_from_torch``.

Exporter choice (measured with torch 2.14 on the recipe models): the torch.export-based
exporter (``dynamo=True``) is the default. It exports every recipe family, CLIP's ViT included
(the legacy TorchScript exporter fails there on ``aten::_native_multi_head_attention``), keeps
LayerNorm as one ``LayerNormalization`` node (what the quantizer's keep-in-float rules match),
and after onnxslim its graphs run as fast as the legacy ones. Its native opset is 18 (it cannot
down-convert to 17), so an explicit ``opset < 18`` selects the legacy exporter, which is also
the fallback when the dynamo export fails. Export is slower (seconds, not sub-second) but it is a
one-time cost.

The file is then checked with ``onnx.checker`` and simplified with onnxslim; when slim fails, or
produces an invalid graph, the unsimplified graph is kept and the reason is recorded as a warning
(the pipeline also falls back to it when the simplified graph fails the parity check).
"""
from __future__ import annotations

import contextlib
import io
import os
import time
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError, MissingDependencyError

DYNAMO_OPSET = 18        # the torch.export-based exporter's native opset
MIN_OPSET = 17
EXPORTERS = ("auto", "dynamo", "torchscript")
_TWO_GB = 2 * 1024 ** 3


@dataclass
class OnnxExport:
    """What ``onnx_from_torch`` did; ``manifest_info()`` goes into the file entry's ``export``."""

    path: Path                       # final (simplified when possible) ONNX file
    raw_path: Path | None            # the unsimplified file, kept for the parity fallback
    exporter: str
    opset: int
    simplified: bool
    nodes: int
    nodes_raw: int
    seconds: float
    simplify_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    log: str = ""

    def manifest_info(self) -> dict:
        import onnx
        import torch

        try:
            import onnxslim

            slim_v = onnxslim.__version__
        except Exception:  # noqa: BLE001
            slim_v = None
        return {"exporter": self.exporter, "opset": self.opset, "simplified": self.simplified,
                "simplifier": "onnxslim" if self.simplified else None, "nodes": self.nodes,
                "nodes_unsimplified": self.nodes_raw, "export_seconds": round(self.seconds, 2),
                "simplify_seconds": round(self.simplify_seconds, 2),
                "torch": torch.__version__, "onnx": onnx.__version__, "onnxslim": slim_v}

    def use_raw(self, reason: str) -> None:
        """Replace the simplified file by the unsimplified one (e.g. slim broke parity)."""
        if self.raw_path is None or not self.simplified:
            return
        os.replace(self.raw_path, self.path)
        self.raw_path = None
        self.simplified = False
        self.nodes = self.nodes_raw
        self.warnings.append(reason)

    def discard_raw(self) -> None:
        if self.raw_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.raw_path.unlink()
            self.raw_path = None


def _imports():
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(getattr(e, "name", None) or "torch/onnx", "export",
                                     "exporting models to ONNX") from e


def _pick_exporter(exporter: str, opset: int) -> list[str]:
    if exporter not in EXPORTERS:
        from ..errors import InvalidOptionError

        raise InvalidOptionError.choice("exporter", exporter, EXPORTERS)
    if exporter == "dynamo" or (exporter == "auto" and opset >= DYNAMO_OPSET):
        return ["dynamo", "torchscript"] if exporter == "auto" else ["dynamo"]
    return ["torchscript"]


def _param_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + \
        sum(b.numel() * b.element_size() for b in module.buffers())


def _export_dynamo(module, example, path: Path, *, opset: int, input_name: str,
                   output_name: str, external: bool) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    prog = torch.onnx.export(module, (example,), None, input_names=[input_name],
                             output_names=[output_name], dynamic_shapes=({0: batch},),
                             opset_version=opset, dynamo=True, optimize=True, verify=False,
                             external_data=external)
    prog.save(str(path), external_data=external)


def _export_torchscript(module, example, path: Path, *, opset: int, input_name: str,
                        output_name: str, external: bool) -> None:
    import torch

    torch.onnx.export(module, (example,), str(path), input_names=[input_name],
                      output_names=[output_name], opset_version=opset, dynamo=False,
                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                      do_constant_folding=True)


def _batch_is_dynamic(model) -> bool:
    for vi in list(model.graph.input[:1]) + list(model.graph.output[:1]):
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _save(model, path: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


def onnx_from_torch(module: Any, path: str | os.PathLike, *, input_shape: tuple[int, ...],
                    opset: int = DYNAMO_OPSET, input_name: str = "pixel_values",
                    output_name: str = "logits", exporter: str = "auto", simplify: bool = True,
                    keep_raw: bool = True) -> OnnxExport:
    """Export ``module`` (eval mode, one NCHW float32 input) to ``path``.

    ``input_shape`` is (C, H, W); the batch axis is dynamic. Raises ``ExportError`` with the
    exporter's log tail when every exporter fails.
    """
    _imports()
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; edgeinfer exports opset >= {MIN_OPSET}.")
    path = Path(path)
    raw = path.with_name(path.stem + ".unsimplified.onnx")
    external = _param_bytes(module) > 0.9 * _TWO_GB
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_shape, generator=gen)
    log = io.StringIO()
    errors: list[str] = []
    notes: list[str] = []
    used = None
    t0 = time.perf_counter()
    for name in _pick_exporter(exporter, opset):
        fn = _export_dynamo if name == "dynamo" else _export_torchscript
        try:
            # The exporters print progress and emit many TracerWarnings: keep them out of the
            # user's terminal (and out of --json stdout), but keep them for the error message.
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                    _warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                _warnings.simplefilter("ignore")
                fn(module, example, raw, opset=opset, input_name=input_name,
                   output_name=output_name, external=external)
            used = name
            break
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - exporter failures are many kinds of errors
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            for p in (raw, raw.with_name(raw.name + ".data")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    seconds = time.perf_counter() - t0
    if used is None:
        tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
        raise ExportError("torch -> ONNX export failed:\n  " + "\n  ".join(errors) +
                          (f"\nexporter log (tail):\n{tail}" if tail else ""))
    if errors:
        notes.append(f"fell back to the {used} exporter ({'; '.join(errors)})")
    try:
        onnx.checker.check_model(str(raw), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the exported ONNX graph is invalid (onnx.checker): {e}") from e
    model = onnx.load(str(raw))
    actual_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if not _batch_is_dynamic(model):
        raise ExportError("the exported graph has a fixed batch size; this model does not export "
                          "with a dynamic batch axis.")
    nodes_raw = len(model.graph.node)
    simplified, nodes, t_slim = False, nodes_raw, 0.0
    if simplify:
        t1 = time.perf_counter()
        try:
            import onnxslim

            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                slim = onnxslim.slim(model)
            onnx.checker.check_model(slim)
            if not _batch_is_dynamic(slim):
                raise ValueError("the simplified graph lost the dynamic batch axis")
            _save(slim, path, external)
            simplified, nodes = True, len(slim.graph.node)
        except ImportError:
            notes.append("onnxslim is not installed: graph left unsimplified "
                         "(pip install 'edgeinfer[export]')")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - keep the valid unsimplified graph
            notes.append(f"onnxslim failed ({type(e).__name__}: {str(e)[:200]}); "
                         f"kept the unsimplified graph")
        t_slim = time.perf_counter() - t1
    if not simplified:
        os.replace(raw, path)
        if external:  # re-save so the data file is named after the final file
            _save(onnx.load(str(path)), path, True)
            with contextlib.suppress(FileNotFoundError):
                raw.with_name(raw.name + ".data").unlink()
        raw_kept = None
    elif keep_raw:
        raw_kept = raw
    else:
        raw.unlink()
        raw_kept = None
    return OnnxExport(path=path, raw_path=raw_kept, exporter=used, opset=int(actual_opset),
                      simplified=simplified, nodes=nodes, nodes_raw=nodes_raw, seconds=seconds,
                      simplify_seconds=t_slim, warnings=notes, log=log.getvalue())
