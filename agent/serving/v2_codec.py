"""Bytes <-> tensors of the v2 (Open Inference Protocol) route: the JSON part, the binary
tensor extension, and the outputs of an answer. Image and .npy bodies are `agent.serving.codec`'s."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.errors import BadInput, InvalidTensor
from agent.serving.api import V2InferRequest, V2Tensor
from agent.serving.body import parse_json
from agent.serving.codec import check_finite

#: The element types of v2 tensors, as the binary tensor extension lays them out (little-endian).
V2_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}
#: The one input of every model, as the v2 metadata names it.
V2_INPUT = "image"


def decode_v2_request(
    head: bytes, binary: bytes, size: int, max_batch: int
) -> tuple[V2InferRequest, NDArray[np.float32] | NDArray[np.uint8]]:
    """A v2 request's JSON part as its model and its input tensor as a batch (see
    `decode_v2_tensor`); the tensor's JSON `data` is dropped from the model once decoded. All of
    the request's decoding in one call, run off the event loop."""
    req = parse_json(V2InferRequest, head, InvalidTensor)
    tensor = v2_input(req)
    arr = decode_v2_tensor(tensor, binary, size, max_batch)
    tensor.data = None
    return req, arr


def v2_input(req: V2InferRequest) -> V2Tensor:
    """The request's one input, named as the metadata names it."""
    names = [tensor.name for tensor in req.inputs]
    if names != [V2_INPUT]:
        raise InvalidTensor(f"inputs: this model takes one input, {V2_INPUT!r}; got {names}")
    return req.inputs[0]


def split_v2_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a v2 request: with the binary tensor extension the JSON is
    the first Inference-Header-Content-Length bytes and the tensors' bytes follow."""
    if header_length is None:
        return body, b""
    try:
        split = int(header_length)
    except ValueError:
        raise BadInput("invalid Inference-Header-Content-Length") from None
    if not 0 < split <= len(body):
        raise BadInput("Inference-Header-Content-Length is outside the body")
    return body[:split], body[split:]


def decode_v2_tensor(
    tensor: V2Tensor, binary: bytes, size: int, max_batch: int = 1, max_side: int = 8192
) -> NDArray[np.float32] | NDArray[np.uint8]:
    """A v2 input tensor as a batch, from its JSON `data` or from the binary part
    (`parameters.binary_data_size`, the request's only binary tensor): FP32 [N, 3, size, size]
    with finite values, or UINT8 frames [N, H, W, 3] of any size (resized like images; [H, W, 3]
    is a batch of one); N from 1 to `max_batch`."""
    shape, dtype = _v2_shape(tensor, size, max_batch, max_side)
    count = math.prod(shape)
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        needed = dtype.itemsize * count
        if type(binary_size) is not int or binary_size != needed:
            raise InvalidTensor(
                f"input {tensor.name!r}: binary_data_size {binary_size} does not match shape {tensor.shape} "
                f"(needs {needed})"
            )
        if len(binary) != binary_size:
            raise InvalidTensor(
                f"input {tensor.name!r}: binary_data_size is {binary_size} but {len(binary)} bytes follow the JSON "
                "(Inference-Header-Content-Length gives the JSON's length)"
            )
        arr = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        if binary:
            raise InvalidTensor(
                f"{len(binary)} bytes follow the JSON, but input {tensor.name!r} has no parameters.binary_data_size"
            )
        try:
            arr = np.asarray(tensor.data, dtype=dtype).reshape(shape)
        except (ValueError, TypeError, OverflowError):
            raise InvalidTensor(
                f"input {tensor.name!r}: data does not hold {count} numbers for shape {tensor.shape}"
            ) from None
    if dtype == np.uint8:
        return arr
    return check_finite(np.array(arr, dtype=np.float32))


def _v2_shape(tensor: V2Tensor, size: int, max_batch: int, max_side: int) -> tuple[list[int], np.dtype[Any]]:
    """(the batch's shape, its element type) for a v2 input, refused unless the model takes it."""
    n, batches = ("1", "") if max_batch == 1 else ("N", f" (N from 1 to {max_batch})")
    shape = list(tensor.shape)
    if tensor.datatype == "FP32":
        if len(shape) != 4 or shape[1:] != [3, size, size] or not 1 <= shape[0] <= max_batch:
            raise InvalidTensor(
                f"input {tensor.name!r}: an FP32 tensor must have shape [{n}, 3, {size}, {size}]{batches}, "
                f"got {tensor.shape}"
            )
        return shape, V2_DTYPES["FP32"]
    if tensor.datatype == "UINT8":
        batch = shape if len(shape) == 4 else [1, *shape]
        if (
            len(batch) != 4
            or batch[3] != 3
            or not 1 <= batch[0] <= max_batch
            or not all(1 <= side <= max_side for side in batch[1:3])
        ):
            raise InvalidTensor(
                f"input {tensor.name!r}: a UINT8 frame must have shape [H, W, 3] or [{n}, H, W, 3]{batches} "
                f"with sides up to {max_side}, got {tensor.shape}"
            )
        return batch, V2_DTYPES["UINT8"]
    raise InvalidTensor(f"input {tensor.name!r}: datatype must be FP32 or UINT8, got {tensor.datatype}")


def encode_v2_output(name: str, datatype: str, values: NDArray[Any], binary: bool) -> tuple[dict[str, Any], bytes]:
    """One output of a v2 answer and the bytes that follow the JSON: its `data` in the JSON, or
    (`binary`, the binary tensor extension) `parameters.binary_data_size` and its bytes:
    little-endian and row-major, a BYTES element as a 4-byte length and its UTF-8 bytes."""
    described: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(values.shape)}
    if not binary:
        return {**described, "data": values.ravel().tolist()}, b""
    if datatype == "BYTES":
        elements = [str(v).encode() for v in values.ravel()]
        raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    else:
        raw = np.ascontiguousarray(values, dtype=V2_DTYPES[datatype]).tobytes()
    return {**described, "parameters": {"binary_data_size": len(raw)}}, raw


def join_v2_body(head: bytes, parts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a v2 answer: the JSON alone, or (binary tensor extension) the JSON,
    then each binary output's bytes in the order of its outputs, with Inference-Header-Content-Length."""
    binary = b"".join(parts)
    if not binary:
        return head, {}
    return head + binary, {"Inference-Header-Content-Length": str(len(head))}
