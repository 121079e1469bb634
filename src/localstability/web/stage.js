// The init image, and the inpainting mask painted over it.

// The init image as chosen (a file, or a result), and drawn on its canvas: fitted to a size
// (image-to-image and masking: the engine's size rules apply to it), or as it is (upscale).
export class InitImage {
  constructor(canvas, painter) {
    this.canvas = canvas;
    this.painter = painter;
    this.source = null; // {blob, bitmap}
  }

  get chosen() {
    return this.source !== null;
  }

  // Throws when the browser can't decode the image.
  async choose(blob) {
    this.source = null;
    this.source = { blob, bitmap: await createImageBitmap(blob) };
  }

  // Draws it scaled to cover width x height and centre-cropped, or at its own size when no
  // size is given. The mask starts again when the size changes or `fresh` says so.
  draw(size, fresh = false) {
    const canvas = this.canvas;
    if (!this.source) {
      canvas.width = canvas.height = 0;
      this.painter.reset(0, 0);
      return;
    }
    const { bitmap } = this.source;
    const [width, height] = size ?? [bitmap.width, bitmap.height];
    const resized = width !== canvas.width || height !== canvas.height;
    canvas.width = width;
    canvas.height = height;
    const scale = Math.max(width / bitmap.width, height / bitmap.height);
    const [sw, sh] = [width / scale, height / scale];
    const [sx, sy] = [(bitmap.width - sw) / 2, (bitmap.height - sh) / 2];
    const context = canvas.getContext("2d");
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, sx, sy, sw, sh, 0, 0, width, height);
    if (fresh || resized) this.painter.reset(width, height);
  }

  // The file as chosen (upscale), or as drawn (a PNG of the fitted image).
  original() {
    return this.source.blob;
  }

  fitted() {
    return canvasBlob(this.canvas);
  }
}

// The inpainting mask: painted with the pointer on a canvas laid over the init image, at the
// init image's own pixel size. What is painted is what the engine regenerates; it is sent as
// a MASK_IMAGE_WHITE mask (white = regenerate, black = keep; docs/api.md, "masking").
export class MaskPainter {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { willReadFrequently: true }); // painted() reads it
    this.brush = 16; // diameter, in image pixels
    this.erasing = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(type, () => {
        this.last = null;
      });
    }
  }

  // A new, empty mask of the init image's size.
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear() {
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  // The pointer's position in image pixels (the canvas is shown scaled).
  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * this.canvas.width) / box.width,
      y: ((event.clientY - box.top) * this.canvas.height) / box.height,
    };
  }

  start(event) {
    if (event.button !== 0) return;
    this.canvas.setPointerCapture(event.pointerId);
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (!this.last) return;
    const next = this.point(event);
    this.stroke(this.last, next);
    this.last = next;
  }

  stroke(from, to) {
    const context = this.context;
    context.save();
    // Erasing takes paint away; painting lays it down (shown tinted by the stylesheet).
    context.globalCompositeOperation = this.erasing ? "destination-out" : "source-over";
    context.strokeStyle = "rgb(255, 0, 160)";
    context.lineWidth = this.brush;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
    context.restore();
  }

  // Whether anything is painted.
  painted() {
    const { data } = this.context.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) {
      if (data[i]) return true;
    }
    return false;
  }

  // The mask the API takes: white where painted (grey at a stroke's soft edge), black
  // elsewhere, as a PNG Blob of the init image's size.
  async toBlob() {
    const mask = document.createElement("canvas");
    mask.width = this.canvas.width;
    mask.height = this.canvas.height;
    const context = mask.getContext("2d");
    context.drawImage(this.canvas, 0, 0);
    context.globalCompositeOperation = "source-in"; // white, with the paint's coverage
    context.fillStyle = "#fff";
    context.fillRect(0, 0, mask.width, mask.height);
    context.globalCompositeOperation = "destination-over"; // on black
    context.fillStyle = "#000";
    context.fillRect(0, 0, mask.width, mask.height);
    return canvasBlob(mask);
  }
}

export function canvasBlob(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("no image"))), "image/png");
  });
}
