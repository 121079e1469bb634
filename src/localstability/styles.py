"""Style presets as prompt templates of our own.

Each preset wraps every positive prompt (`{prompt}` is replaced by its text) and adds one
negative prompt of weight -1 that steers away from what the style is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from localstability.protocol import StylePreset


@dataclass(frozen=True)
class StyleTemplate:
    prompt: str
    negative_prompt: str

    def apply(self, text: str) -> str:
        return self.prompt.replace("{prompt}", text)


STYLE_TEMPLATES: dict[StylePreset, StyleTemplate] = {
    StylePreset.ENHANCE: StyleTemplate(
        "{prompt}, stunning, masterful composition, crisp detail, professional quality",
        "blurry, noisy, distorted, low quality, deformed",
    ),
    StylePreset.ANIME: StyleTemplate(
        "anime illustration of {prompt}, cel shading, expressive, vivid colours, anime key art",
        "photograph, realistic, 3d render, monochrome, washed out",
    ),
    StylePreset.PHOTOGRAPHIC: StyleTemplate(
        "photograph of {prompt}, natural light, 50mm lens, sharp focus, true-to-life detail",
        "drawing, painting, illustration, cartoon, anime, render, oversaturated",
    ),
    StylePreset.DIGITAL_ART: StyleTemplate(
        "digital painting of {prompt}, concept art, painterly brushwork, rich detail",
        "photograph, photorealistic, low detail, ugly",
    ),
    StylePreset.COMIC_BOOK: StyleTemplate(
        "comic book panel of {prompt}, bold ink lines, halftone shading, dynamic, vibrant",
        "photograph, realistic, blurry, muted colours",
    ),
    StylePreset.FANTASY_ART: StyleTemplate(
        "fantasy artwork of {prompt}, mythical, luminous, epic scale, painterly, magical mood",
        "photograph, mundane, modern, dull, low detail",
    ),
    StylePreset.LINE_ART: StyleTemplate(
        "line drawing of {prompt}, clean black outlines, minimal, vector style, white background",
        "shading, colour fill, photograph, texture, gradient, noisy",
    ),
    StylePreset.ANALOG_FILM: StyleTemplate(
        "analog film photograph of {prompt}, 35mm film grain, soft faded colours, light leaks",
        "digital look, painting, illustration, oversharpened, cartoon",
    ),
    StylePreset.NEON_PUNK: StyleTemplate(
        "neon punk scene of {prompt}, glowing neon lights, cyberpunk, magenta and cyan, night",
        "daylight, pastel, muted colours, painting, dull",
    ),
    StylePreset.ISOMETRIC: StyleTemplate(
        "isometric view of {prompt}, 3d isometric diorama, clean geometry, orthographic",
        "perspective distortion, fisheye, photograph, blurry, messy",
    ),
    StylePreset.LOW_POLY: StyleTemplate(
        "low poly model of {prompt}, faceted polygons, flat shaded, geometric, simple palette",
        "high detail, smooth surfaces, photograph, noisy, texture",
    ),
    StylePreset.ORIGAMI: StyleTemplate(
        "origami of {prompt}, folded paper craft, crisp creases, paper texture, studio light",
        "photograph of real object, plastic, metal, messy, blurry",
    ),
    StylePreset.MODELING_COMPOUND: StyleTemplate(
        "clay figure of {prompt}, modelling compound, handmade, soft rounded shapes, claymation",
        "photograph, realistic skin, glossy, sharp edges, painting",
    ),
    StylePreset.CINEMATIC: StyleTemplate(
        "cinematic still of {prompt}, dramatic lighting, shallow depth of field, film grade",
        "cartoon, anime, flat lighting, drawing, low budget",
    ),
    StylePreset.THREE_D_MODEL: StyleTemplate(
        "3d render of {prompt}, physically based materials, studio lighting, high detail",
        "drawing, painting, flat, sketch, blurry, low poly",
    ),
    StylePreset.PIXEL_ART: StyleTemplate(
        "pixel art of {prompt}, 16-bit retro game sprite, limited palette, crisp pixels",
        "smooth gradients, photograph, blurry, anti-aliased, realistic",
    ),
    StylePreset.TILE_TEXTURE: StyleTemplate(
        "seamless tileable texture of {prompt}, flat top-down view, repeating pattern",
        "perspective, vignette, border, seams, objects, text",
    ),
}
