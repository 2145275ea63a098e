"""onnxruntime predictor: numpy around two ONNX sessions, no torch.

Runs both our exports (``edgesam export``: bicubic encoder; decoder with mask input, batch and point
axes dynamic, all 4 tokens with IoU and stability scores) and the official EdgeSAM ONNX files
(``edge_sam_3x_encoder.onnx`` / ``edge_sam_3x_decoder.onnx``: no mask input, batch 1, one ``scores``
output). The decoder flavour and the other capabilities are read by :mod:`.model_files`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from . import transforms
from .base import F32, BasePredictor, DecodeOutputs
from .masks import stability_score
from .model_files import FLAVOUR_OURS, Capabilities, OnnxModelError, read_capabilities
from .providers import ExecutionPlan, parse_device, resolve_providers

#: Default prompts per decoder run on the CPU (bounded memory; see :class:`OnnxPredictor`).
CPU_DECODE_BATCH = 8


def session_options(intra_op_num_threads: int | None = None, mem_arena: bool = True) -> ort.SessionOptions:
    """CPU-friendly defaults: full graph optimisation, sequential execution, given intra-op threads.

    ``mem_arena`` is onnxruntime's CPU memory arena. Measured here (decoder, 2 threads): with it
    21-22 ms per prompt and ~58 MB resident per prompt of the largest batch seen (B=64: ~3.7 GB);
    without it 28-29 ms per prompt and no growth. The encoder is ~20% faster with it.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = mem_arena
    if intra_op_num_threads:
        so.intra_op_num_threads = int(intra_op_num_threads)
    return so


def _session(
    path: str | os.PathLike[str], so: ort.SessionOptions, plan: ExecutionPlan
) -> ort.InferenceSession:
    p = Path(path)
    if not p.is_file():
        raise OnnxModelError(f"ONNX file not found: {p}")
    providers, options = plan.ort_arguments()
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=providers, provider_options=options)
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise OnnxModelError(f"cannot load {p}: {exc}") from exc


class OnnxPredictor(BasePredictor):
    """EdgeSAM on onnxruntime.

    Args:
        encoder_path: encoder ONNX (input ``image (1, 3, S, S)``, output ``image_embeddings``; ``S`` is the
            model's ``image_size``, read from the graph).
        decoder_path: decoder ONNX (our export or the official format).
        intra_op_num_threads: threads per session (``None``: onnxruntime's default, all cores).
        device: ``cpu`` (default), ``cuda[:N]``, ``tensorrt``, ``openvino``, ``coreml`` or ``auto``, or
            an :class:`ExecutionPlan` from :func:`.providers.resolve_providers`.
        capabilities: what the files offer, if already read (see :func:`.model_files.read_capabilities`).
        decoder_mem_arena: keep onnxruntime's memory arena for the decoder (25-30% faster per prompt;
            resident memory grows ~58 MB per prompt of the largest batch). Turn it off for servers that
            decode large batches rarely, or use a smaller ``points_per_batch`` (16 is as fast per prompt).
        max_decode_batch: prompts per onnxruntime decoder run; larger ``decode`` batches are split
            (same outputs). Default: :data:`CPU_DECODE_BATCH` on the CPU (with the arena the decoder's
            peak resident memory is ~0.6 GB at 8, ~1.1 GB at 16, ~3.9 GB at 64), none on accelerators.
        io_binding: keep the image embedding on the execution device between decoder calls
            (onnxruntime IO binding: one host→device copy per image instead of one per decoder call,
            4 MB at 1024 px). Default: on for CUDA / TensorRT, off on the CPU (nothing to copy there).
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        intra_op_num_threads: int | None = None,
        device: str | ExecutionPlan = "cpu",
        decoder_mem_arena: bool = True,
        capabilities: Capabilities | None = None,
        max_decode_batch: int | str | None = "auto",
        io_binding: bool | None = None,
    ) -> None:
        super().__init__()
        caps = capabilities if capabilities is not None else read_capabilities(encoder_path, decoder_path)
        plan = device if isinstance(device, ExecutionPlan) else resolve_providers(device)
        self.capabilities = caps
        self.execution = plan
        if max_decode_batch == "auto":
            max_decode_batch = CPU_DECODE_BATCH if plan.chosen == "cpu" else None
        self.max_decode_batch = None if max_decode_batch is None else max(1, int(max_decode_batch))
        self.encoder_path, self.decoder_path = Path(encoder_path), Path(decoder_path)
        self.encoder = _session(encoder_path, session_options(intra_op_num_threads), plan)
        self.decoder = _session(decoder_path, session_options(intra_op_num_threads, decoder_mem_arena), plan)
        #: Providers onnxruntime actually attached (the encoder's session), in priority order.
        self.providers: list[str] = list(self.encoder.get_providers())
        self._enc_input = caps.encoder_input
        self._enc_output = caps.encoder_output
        #: The encoder also emits the region proposal maps (exported with an RPN head).
        self.has_proposals = caps.has_proposals
        self.flavour = caps.flavour
        #: ``"fp32"``, ``"fp16"`` or ``"int8"``: the encoder's number format (shown by ``/health``).
        self.precision = caps.precision
        self.supports_mask_input = caps.supports_mask_input
        self.image_size = caps.image_size
        self._official_stability = caps.official_scores_are_stability
        name, index = parse_device(plan.chosen)
        on_gpu = name in ("cuda", "tensorrt")
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        self._ort_device = ("cuda" if on_gpu else "cpu", index or 0)
        self._bound: tuple[NDArray[np.float32], ort.OrtValue] | None = None

    def _device_embedding(self, embeddings: NDArray[np.float32]) -> ort.OrtValue:
        """The embedding as an OrtValue on the execution device, copied once per embedding array."""
        bound = self._bound
        if bound is not None and bound[0] is embeddings:
            return bound[1]
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(embeddings), *self._ort_device)
        self._bound = (embeddings, value)
        return value

    def _run_decoder(
        self, outputs: list[str], feeds: dict[str, NDArray[np.float32]]
    ) -> list[NDArray[np.float32]]:
        if not self.io_binding:
            return self.decoder.run(outputs, feeds)
        binding = self.decoder.io_binding()
        for key, value in feeds.items():
            if key == "image_embeddings":
                binding.bind_ortvalue_input(key, self._device_embedding(value))
            else:
                binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for out in outputs:
            binding.bind_output(out, "cpu")
        self.decoder.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _encode_tensor(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.encoder.run([self._enc_output], {self._enc_input: x})[0]

    def _encode_outputs(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        if not self.has_proposals:
            return super()._encode_outputs(x)
        names = [self._enc_output, "proposal_logits", "proposal_ltrb"]
        emb, logits, ltrb = self.encoder.run(names, {self._enc_input: x})
        return {"image_embeddings": emb, "proposal_logits": logits, "proposal_ltrb": ltrb}

    def _decode(self, embeddings: F32, coords: F32, labels: F32, mask_input: F32 | None) -> DecodeOutputs:
        b = coords.shape[0]
        if self.flavour == FLAVOUR_OURS:
            has = np.ones(b, np.float32) if mask_input is not None else np.zeros(b, np.float32)
            if mask_input is None:
                low = transforms.low_res_size(transforms.image_size_of_embeddings(embeddings))
                mask_input = np.zeros((b, 1, low, low), np.float32)
            low, iou, stab = self._run_decoder(
                ["low_res_logits", "iou_predictions", "stability_scores"],
                {
                    "image_embeddings": embeddings,
                    "point_coords": coords,
                    "point_labels": labels,
                    "mask_input": mask_input,
                    "has_mask_input": has,
                },
            )
            return low, iou, stab
        lows, scores = [], []
        for i in range(b):  # the official export has a fixed batch of 1
            s, m = self._run_decoder(
                ["scores", "masks"],
                {
                    "image_embeddings": embeddings,
                    "point_coords": coords[i : i + 1],
                    "point_labels": labels[i : i + 1],
                },
            )
            lows.append(m)
            scores.append(s)
        low = np.concatenate(lows, axis=0)
        score = np.concatenate(scores, axis=0)
        stab = stability_score(low)
        # Official files carry one score: stability (recommended export) or raw IoU. The IoU head's output
        # is unavailable from a stability export, so it is reported as NaN there.
        iou = np.full_like(score, np.nan) if self._official_stability else score
        return low, iou, stab
