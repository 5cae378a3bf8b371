"""The decode path: camera-sized JPEGs decoded at a reduced DCT scale, uint8 frames, ROIs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from agent.errors import InvalidTensor, RoiOutsideFrame
from agent.serving.codec import check_frame, decode_npy, decode_to_input, jpeg_draft_size, open_image
from agent.zoo.preprocess import RESIZE_FILTER, Roi, array_to_input, image_to_input
from model_zoo import data

SIZE = 128


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def reference(body: bytes, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The slow path: the whole frame decoded, then one resize over every source pixel."""
    image = Image.open(io.BytesIO(body)).convert("RGB")
    if box is not None:
        image = image.crop(box)
    arr = np.asarray(image.resize((size, size), RESIZE_FILTER), dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1)[None]


@pytest.fixture(scope="module")
def frames() -> list[Image.Image]:
    """Test images upscaled to 1080p, as a camera station would send the part."""
    images, _ = data.generate("test", 8)
    return [Image.fromarray(i).resize((1920, 1080), Image.Resampling.BICUBIC) for i in images]


def test_jpeg_frame_decoded_at_reduced_scale_matches_a_full_decode(frames: list[Image.Image]) -> None:
    for frame in frames:
        body = encode(frame, "JPEG", quality=90)
        image = open_image(body)
        fast = decode_to_input(image, SIZE)
        assert image.size[0] < 1920, "draft mode should have reduced the decode"
        assert fast.shape == (1, 3, SIZE, SIZE)
        assert np.abs(fast - reference(body, SIZE)).mean() <= 2 / 255


def test_a_720p_jpeg_decodes_at_half_scale_and_matches_a_full_decode(frames: list[Image.Image]) -> None:
    """1/4 of 720p (320x180) leaves only 1.4x a 128 px input across, which moved full@1's label
    on 0.8% of test images (bench/frames): 720p decodes at 1/2."""
    for frame in frames[:4]:
        body = encode(frame.resize((1280, 720), Image.Resampling.BICUBIC), "JPEG", quality=90)
        image = open_image(body)
        assert jpeg_draft_size(1280, 720, SIZE) == (640, 360)
        fast = decode_to_input(image, SIZE)
        assert image.size == (640, 360)
        assert np.abs(fast - reference(body, SIZE)).mean() <= 2 / 255


def test_png_frame_reduced_before_resize_matches_a_full_resize(frames: list[Image.Image]) -> None:
    body = encode(frames[0], "PNG", compress_level=1)
    fast = decode_to_input(open_image(body), SIZE)
    assert np.abs(fast - reference(body, SIZE)).mean() <= 2 / 255


def test_roi_crops_in_source_pixels_before_the_resize(frames: list[Image.Image]) -> None:
    body = encode(frames[1], "JPEG", quality=90)
    roi = Roi.parse("600,200,700,640")
    fast = decode_to_input(open_image(body), SIZE, roi)
    box = (roi.x, roi.y, roi.x + roi.width, roi.y + roi.height)
    assert np.abs(fast - reference(body, SIZE, box)).mean() <= 2 / 255
    whole = decode_to_input(open_image(body), SIZE)
    assert np.abs(fast - whole).mean() > 2 / 255, "the ROI must change what the model sees"


@pytest.mark.parametrize(
    "text, message",
    [("1,2,3", "x,y,w,h"), ("a,b,c,d", "x,y,w,h"), ("0,0,0,5", "w, h >= 1"), ("-1,0,5,5", "x and y")],
)
def test_roi_syntax_errors_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Roi.parse(text)


def test_roi_outside_the_frame_is_refused_with_the_frame_size(frames: list[Image.Image]) -> None:
    body = encode(frames[0], "JPEG", quality=90)
    with pytest.raises(RoiOutsideFrame, match="1920x1080 frame") as err:
        decode_to_input(open_image(body), SIZE, Roi(1800, 0, 200, 100))
    assert err.value.status == 422
    with pytest.raises(RoiOutsideFrame):
        array_to_input(np.zeros((100, 200, 3), np.uint8), SIZE, roi=Roi(0, 50, 10, 51))


def test_uint8_frames_rgb_and_bgr_give_the_input_of_the_png() -> None:
    images, _ = data.generate("test", 2)
    rgb = images[1]
    from_png = decode_to_input(open_image(encode(Image.fromarray(rgb), "PNG")), SIZE)
    np.testing.assert_array_equal(array_to_input(check_frame(rgb), SIZE), from_png)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(array_to_input(check_frame(bgr[None]), SIZE, channel_order="bgr"), from_png)
    big = np.asarray(Image.fromarray(rgb).resize((640, 480), Image.Resampling.BICUBIC))
    expected = image_to_input(Image.fromarray(big[40:440, 100:500]), SIZE)
    got = array_to_input(check_frame(big[:, :, ::-1]), SIZE, "bgr", Roi(100, 40, 400, 400))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_uint8_npy_body_decodes_in_place() -> None:
    frame = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    buf = io.BytesIO()
    np.save(buf, frame, allow_pickle=False)
    decoded = decode_npy(buf.getvalue())
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(check_frame(decoded), frame)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 4), (2, 4, 5, 3), (0, 5, 3)])
def test_uint8_frame_of_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidTensor, match=r"uint8 frame of shape \(H, W, 3\)"):
        check_frame(np.zeros(shape, np.uint8))


def test_npy_of_other_dtype_names_both_accepted_layouts() -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 4, 4), np.int16), allow_pickle=False)
    with pytest.raises(InvalidTensor, match=r"float32 \(3, H, W\) or uint8 \(H, W, 3\)"):
        decode_npy(buf.getvalue())
