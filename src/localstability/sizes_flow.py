"""The size rules of the flow-matching families (SD 3.5, FLUX.1), which the v1 spec predates:
sides in multiples of 16 (their VAE's 8 times the transformer's 2x2 patches) within fixed
bounds, and a pixel count in the range each model was trained on (docs/models.md)."""

from __future__ import annotations

from collections.abc import Callable

from localstability import errors

FLOW_SIZE_STEP = 16
FLOW_MIN_SIDE, FLOW_MAX_SIDE = 256, 2048


def flow_rule(low: int, high: int, trained: str) -> Callable[[str, int, int], None]:
    """SD 3.5 and Flux: both sides multiples of 16 between 256 and 2048, and
    low <= width * height <= high (`trained` names the range in the error message)."""

    def rule(engine_id: str, width: int, height: int) -> None:
        sides_ok = all(FLOW_MIN_SIDE <= side <= FLOW_MAX_SIDE for side in (width, height))
        if width % FLOW_SIZE_STEP or height % FLOW_SIZE_STEP or not sides_ok:
            raise errors.InvalidHeightOrWidth(
                f"for {engine_id} height and width must be multiples of {FLOW_SIZE_STEP} between "
                f"{FLOW_MIN_SIDE} and {FLOW_MAX_SIDE}, but we received {width}x{height}"
            )
        if not low <= width * height <= high:
            raise errors.InvalidPixelCount(
                f"for {engine_id} the pixel count (width x height) must be between {low:,} and "
                f"{high:,} ({trained}), but we received {width}x{height} = {width * height:,}"
            )

    return rule


SD35_LARGE_RULE = flow_rule(262_144, 1_048_576, "0.25 to 1 megapixel, as SD 3.5 Large was trained")
SD35_MEDIUM_RULE = flow_rule(262_144, 2_073_600, "SD 3.5 Medium was trained up to 1440x1440")
FLUX_RULE = flow_rule(65_536, 2_097_152, "FLUX.1 takes 0.06 to 2 megapixels")
