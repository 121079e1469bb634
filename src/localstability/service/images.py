"""Uploaded images: type sniffed from the bytes, size and pixel limits, corrupt files refused."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from localstability import errors

ACCEPTED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def _has_accepted_signature(data: bytes) -> bool:
    """The file starts like a PNG, JPEG or WebP (whatever follows)."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    )


def check_file_size(field: str, data: bytes, max_bytes: int) -> None:
    """An uploaded file may be at most `max_bytes` long."""
    if len(data) > max_bytes:
        raise errors.InvalidFileSize(
            f"{field}: the file is larger than the limit of {max_bytes:,} bytes"
        )


def decode_upload(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode an uploaded PNG, JPEG or WebP; the part's declared content type is ignored.

    Returns an RGB image, or RGBA when the file has transparency. JPEG orientation tags are
    applied, so the pixels are the way a viewer shows them.
    """
    if not data:
        raise errors.InvalidFileSize(f"{field}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)
    except UnidentifiedImageError:
        if _has_accepted_signature(data):
            # A PNG, JPEG or WebP whose header is broken: the type is right, the file is not.
            raise errors.BadRequest(f"{field}: the image is corrupt or truncated") from None
        raise errors.InvalidMimeType(
            f"{field}: not an image this server reads; send a PNG, JPEG or WebP file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise errors.BadRequest(
            f"{field}: the image declares too many pixels (limit {max_pixels:,})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow's plugins fail this way on a header they can't read (e.g. a truncated WebP).
        raise errors.BadRequest(f"{field}: the image is corrupt or truncated ({exc})") from None
    if image.format not in ACCEPTED_FORMATS:
        raise errors.InvalidMimeType(
            f"{field}: {image.format or 'unknown'} images are not accepted; "
            "send a PNG, JPEG or WebP file"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise errors.BadRequest(
            f"{field}: the image is {width}x{height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,}"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise errors.BadRequest(f"{field}: the image is corrupt or truncated ({exc})") from None
    upright = ImageOps.exif_transpose(image)
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    return upright.convert("RGBA" if has_alpha else "RGB")
