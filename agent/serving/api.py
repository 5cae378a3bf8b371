"""pydantic models of the HTTP API's bodies (requests and answers)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.zoo.preprocess import ChannelOrder, Roi


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Score(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    label: str
    score: float
    top: list[Score]
    variant: str
    budget: float
    kept_tokens: int
    queue_ms: float
    decode_ms: float = Field(description="Body to model input: decode, crop, resize")
    compute_ms: float = Field(description="The model's run")
    attention: list[list[float]] | None = None


class ClassifyQuery(BaseModel):
    """Query of `POST /v1/classify`."""

    deadline_ms: float | None = Field(None, gt=0, le=600_000, description="Refuse (503) if not answerable in time")
    explain: bool = Field(False, description="Add the CLS attention map over the patch grid")
    roi: str | None = Field(
        None,
        description="x,y,w,h in source pixels: classify this region of the frame (cropped before the resize)",
    )
    channel_order: ChannelOrder = Field("rgb", description="Of a uint8 (H, W, 3) .npy frame: rgb, or bgr (OpenCV)")

    @field_validator("roi")
    @classmethod
    def _check_roi(cls, value: str | None) -> str | None:
        if value is not None:
            Roi.parse(value)  # w, h >= 1: a ValueError becomes the 422's message
        return value

    @property
    def region(self) -> Roi | None:
        return None if self.roi is None else Roi.parse(self.roi)


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="VARIANT@BUDGET, e.g. int8@0.5")
    seconds: float = Field(default=600, gt=0, le=30 * 24 * 3600)
    reason: str = Field(default="maintenance", max_length=200)


class PinAnswer(BaseModel):
    config: str
    until: float
    reason: str


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(BaseModel):
    """An output a v2 request asks for; `parameters.binary_data` asks for it as binary."""

    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=4)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=8)
    parameters: dict[str, Any] | None = None


class V2ErrorBody(BaseModel):
    """The error of every v2 route: the protocol's `$inference_error_response`."""

    error: str


class V2TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    inputs: list[V2TensorMeta]
    outputs: list[V2TensorMeta]
    parameters: dict[str, Any] = {}
