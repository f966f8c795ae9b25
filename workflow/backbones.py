"""Pretrained backbones read from local files, for the embed stage: nothing is downloaded, ever.

Two kinds (:func:`load_backbone` tells them apart by the path):

* a **Hugging Face ``transformers`` model folder**, as ``save_pretrained`` writes it (``config.json`` and
  ``model.safetensors``; e.g. DINOv2, ViT, a CLIP vision tower). It is loaded with ``AutoModel`` and
  ``local_files_only=True`` under ``HF_HUB_OFFLINE=1``; no remote code runs. A full CLIP (or SigLIP) model
  contributes its vision tower. Images (tables with ``image_shape`` metadata, pixels in [0, 1]) are brought to
  the image processor's size (``preprocessor_config.json``: ``crop_size`` when it centre-crops, else ``size``;
  without that file the model's ``image_size``) by bilinear resizing with antialiasing, given the model's number
  of channels (grey repeated to RGB, RGB averaged to grey) and normalised with its ``image_mean`` /
  ``image_std``. ``pooling`` picks the vector: ``pooler`` (the model's pooled output, e.g. DINOv2's
  layer-normed CLS token or CLIP's post-layernorm CLS), ``cls`` (the first token of the last hidden state),
  ``mean`` (the mean of the other tokens) or ``auto`` (``pooler`` when the model has one with trained
  weights, else ``cls``).
* a **TorchScript file** (``torch.jit.script(model).save(path)``): it gets the table's rows as they are, as a
  float32 ``(batch, C, H, W)`` tensor for images and ``(batch, dim)`` otherwise, and must return one
  ``(batch, width)`` tensor; put any preprocessing in the script.

Weights that do not fit the architecture (missing, or of another shape), an unknown model type, a path that
is not there (a hub name such as ``facebook/dinov2-small`` is not downloaded) are :class:`StrataError` s that
name the file and, for weights, the first parameter that does not fit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workflow.errors import StrataError

_FIX_HF = "save the model with `model.save_pretrained(folder)` (transformers) and name that folder."
_FIX_TS = "save the model with `torch.jit.script(model).save(path)` (or torch.jit.trace) and name that file."


def is_strata_encoder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an encoder of this study (``strata pretrain``'s ``.safetensors``), not a backbone."""
    return Path(path).suffix == ".safetensors"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep transformers' load reports, progress bars and warnings out of the job's log."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            return (int(value["shortest_edge"]), int(value["shortest_edge"]))
    return None


class Backbone:
    """A loaded backbone: :meth:`embed` maps a batch of table rows to ``(batch, width)`` float32 embeddings."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", pooling: str = "auto") -> None:
        self.path = Path(path)
        self.device = device
        self.pooling = pooling
        self.kind = ""
        self.model: Any = None
        self.image_size: tuple[int, int] | None = None
        self.channels: int | None = None
        self.mean: Any = None
        self.std: Any = None
        self.has_pooler = True
        if not self.path.exists():
            raise StrataError("no such backbone: not a local folder or file (nothing is downloaded; a hub name such "
                              "as facebook/dinov2-small must be saved locally first)", where=str(path),
                              fix=_FIX_HF)
        if self.path.is_dir():
            self._load_transformers()
        else:
            self._load_torchscript()

    # -- loading ------------------------------------------------------------------------------------------------

    def _load_transformers(self) -> None:
        self.kind = "transformers"
        where = str(self.path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise StrataError("the backbone folder has no config.json", where=where, fix=_FIX_HF)
        try:
            config = json.loads(config_file.read_text())
        except ValueError as err:
            raise StrataError(f"config.json is not valid JSON ({err})", where=str(config_file), fix=_FIX_HF) from err
        _offline()
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        model_type = config.get("model_type")
        try:
            with _quiet():
                model, info = AutoModel.from_pretrained(str(self.path), local_files_only=True,
                                                        output_loading_info=True, ignore_mismatched_sizes=True,
                                                        trust_remote_code=False)
        except ValueError as err:
            if "model type" in str(err) or "Unrecognized" in str(err) or "does not recognize" in str(err):
                raise StrataError(f"unknown model type {model_type!r} in config.json (transformers knows no such "
                                  "architecture)", where=str(config_file),
                                  fix="use a model type of the installed transformers (e.g. dinov2, vit, "
                                      "clip_vision_model) or a TorchScript file.") from err
            raise StrataError(f"cannot load the model ({' '.join(str(err).split())[:300]})", where=where,
                              fix=_FIX_HF) from err
        except (OSError, RuntimeError, KeyError, TypeError) as err:  # no or unreadable weights file
            raise StrataError(f"cannot load the model weights ({' '.join(str(err).split())[:300]})", where=where,
                              fix=_FIX_HF) from err
        except Exception as err:  # safetensors' own error for a corrupt file, and the like
            raise StrataError(f"cannot load the model weights ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:300]})", where=where, fix=_FIX_HF) from err
        order = {name: i for i, name in enumerate(model.state_dict())}
        mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: order.get(m[0], len(order)))
        if mismatched:
            name, ckpt, expected = mismatched[0]
            raise StrataError(f"the weights do not fit the architecture of config.json: parameter {name!r} is "
                              f"{list(ckpt)} in the weights file but {list(expected)} in the model "
                              f"({len(mismatched)} parameter(s) differ)", where=where,
                              fix="use the config.json saved with these weights.")
        missing = sorted(info.get("missing_keys") or (), key=lambda k: order.get(k, len(order)))
        pooler_only = bool(missing) and all(k.startswith("pooler.") for k in missing)
        if missing and not (pooler_only and self.pooling != "pooler"):
            raise StrataError(f"the weights file has no value for parameter {missing[0]!r} of the architecture "
                              f"({len(missing)} missing)", where=where,
                              fix="use the config.json saved with these weights"
                                  + (", or pooling: cls." if pooler_only else "."))
        if hasattr(model, "vision_model") and hasattr(model, "text_model"):
            model = model.vision_model  # a full CLIP / SigLIP: its vision tower
        self.has_pooler = not pooler_only
        vision_cfg = getattr(model, "config", None)
        self.channels = int(getattr(vision_cfg, "num_channels", 3) or 3)
        processor = self._processor_config()
        size = None
        if processor.get("do_center_crop", False) and processor.get("crop_size") is not None:
            size = _size(processor["crop_size"])
        if size is None and processor.get("size") is not None:
            size = _size(processor["size"])
        if size is None:
            size = _size(getattr(vision_cfg, "image_size", None))
        self.image_size = size
        if processor.get("do_normalize", bool(processor)) and processor.get("image_mean") is not None:
            mean = np.asarray(processor["image_mean"], dtype=np.float32).reshape(-1)
            std = np.asarray(processor.get("image_std", [1.0]), dtype=np.float32).reshape(-1)
            self.mean = torch.as_tensor(np.resize(mean, self.channels).reshape(1, -1, 1, 1), device=self.device)
            self.std = torch.as_tensor(np.resize(std, self.channels).reshape(1, -1, 1, 1), device=self.device)
        self.model = model.to(self.device).eval()

    def _processor_config(self) -> dict[str, Any]:
        path = self.path / "preprocessor_config.json"
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text())
        except ValueError as err:
            raise StrataError(f"preprocessor_config.json is not valid JSON ({err})", where=str(path),
                              fix="save the image processor with `processor.save_pretrained(folder)`.") from err
        return value if isinstance(value, dict) else {}

    def _load_torchscript(self) -> None:
        self.kind = "torchscript"
        import torch

        try:
            with _quiet():
                self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as err:  # not a TorchScript archive (a pickled state dict, a corrupt file ...)
            raise StrataError(f"not a TorchScript file ({type(err).__name__}: {' '.join(str(err).split())[:200]})",
                              where=str(self.path), fix=_FIX_TS) from err

    # -- inference ----------------------------------------------------------------------------------------------

    def embed(self, vectors: np.ndarray, image_shape: list[int] | None = None) -> np.ndarray:
        """Embeddings of a batch of table rows (images flat, channel-major, with their ``image_shape``)."""
        import torch

        with torch.inference_mode(), warnings.catch_warnings():
            # Arrays from Ray's object store are read-only views; inference does not write to them.
            warnings.simplefilter("ignore", UserWarning)
            x = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=self.device)
            if image_shape is not None:
                x = x.reshape(len(x), *image_shape)
            out = self._transformers(x) if self.kind == "transformers" else self._torchscript(x)
        return out.float().cpu().numpy()

    def _torchscript(self, x: Any) -> Any:
        import torch

        out = self.model(x)
        if not isinstance(out, torch.Tensor):
            raise StrataError(f"the TorchScript model returned a {type(out).__name__}, not one tensor",
                              where=str(self.path), fix="script a module whose forward returns a (batch, width) "
                                                        "tensor.")
        return out.reshape(len(out), -1) if out.ndim > 2 else out

    def _pixels(self, x: Any) -> Any:
        import torch.nn.functional as F

        if x.ndim != 4:
            raise StrataError("a transformers vision backbone needs images, but the table holds vectors (no "
                              "image_shape in its metadata)", where=str(self.path),
                              fix="curate an image data set (image-folder, digits-images) in this space, or use "
                                  "a TorchScript backbone for vectors.")
        c = x.shape[1]
        if c != self.channels:
            if c == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise StrataError(f"the images have {c} channels but the model takes {self.channels}",
                                  where=str(self.path), fix="set the data set's image_mode (RGB or L) to match.")
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous()

    def _transformers(self, x: Any) -> Any:
        out = self.model(pixel_values=self._pixels(x))
        pooled = getattr(out, "pooler_output", None)
        hidden = getattr(out, "last_hidden_state", None)
        pooling = self.pooling
        if pooling == "auto":
            pooling = "pooler" if pooled is not None and self.has_pooler else "cls"
        if pooling == "pooler":
            if pooled is None:
                raise StrataError("the model has no pooled output", where=str(self.path),
                                  fix="use pooling: cls or mean.")
            return pooled.reshape(len(pooled), -1)
        if hidden is None or hidden.ndim != 3:
            raise StrataError(f"pooling {pooling!r} needs token outputs, which this model does not give",
                              where=str(self.path), fix="use pooling: pooler (or auto).")
        return hidden[:, 0] if pooling == "cls" or hidden.shape[1] == 1 else hidden[:, 1:].mean(dim=1)


def load_backbone(path: str | os.PathLike[str], device: str = "cpu", pooling: str = "auto") -> Backbone:
    """Load a backbone (see the module docstring); raises :class:`StrataError` on anything unusable."""
    return Backbone(path, device, pooling)
