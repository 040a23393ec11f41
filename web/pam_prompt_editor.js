// Points/box editor on the "PAM Segment & Describe" and "PAM Video" nodes: shows the picture behind the node's
// image input (for PAM Video: the first frame of the connected video); left-click adds a positive point,
// right-click a negative point, left-drag a box. Everything lives in the node's "prompt" STRING widget (JSON in
// image pixels), so saved workflows and API prompts carry it without the browser.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PICTURE_INPUTS = { PAMSegmentDescribe: "image", PAMVideo: "frames" }; // node type -> its IMAGE input
const DRAG_PIXELS = 6; // shorter mouse moves count as clicks
const COLORS = { positive: "#22c55e", negative: "#ef4444", box: "#38bdf8" };

function parsePrompt(text) {
  const empty = { positive: [], negative: [], boxes: [] };
  try {
    const data = JSON.parse(text || "{}");
    if (Array.isArray(data)) return { ...empty, positive: data }; // a KJNodes point list
    return { ...empty, ...data };
  } catch {
    return null; // being typed by hand: leave it alone
  }
}

function round(value) {
  return Math.round(value * 10) / 10;
}

function inputFileUrl(file) {
  const cut = file.lastIndexOf("/");
  const params = new URLSearchParams({
    filename: file.slice(cut + 1), subfolder: cut >= 0 ? file.slice(0, cut) : "", type: "input",
  });
  return api.apiURL(`/view?${params}`);
}

// Where the picture behind the node's input `name` can be fetched: a Load Image node's file, the preview an
// upstream node shows, or a Load Video node's file (`video: true`), also through Get Video Components.
function pictureSource(node, name, depth = 0) {
  const slot = node.inputs?.findIndex((input) => input.name === name);
  const upstream = slot >= 0 ? node.getInputNode(slot) : null;
  if (!upstream || depth > 3) return null;
  const widgetValue = (widgetName) => upstream.widgets?.find((w) => w.name === widgetName)?.value;
  const image = widgetValue("image");
  if (typeof image === "string" && image) return { url: inputFileUrl(image), video: false };
  const video = upstream.comfyClass === "LoadVideo" ? widgetValue("file") : null;
  if (typeof video === "string" && video) return { url: inputFileUrl(video), video: true };
  if (upstream.imgs?.[0]?.src) return { url: upstream.imgs[0].src, video: false };
  return upstream.inputs?.some((input) => input.name === "video") ? pictureSource(upstream, "video", depth + 1) : null;
}

// A video's first frame as an image URL (a PNG blob), so the editor draws it like any picture.
function firstFrameUrl(url) {
  return new Promise((resolve, reject) => {
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "auto";
    video.onloadeddata = () => {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      canvas.toBlob((blob) => (blob ? resolve(URL.createObjectURL(blob)) : reject(new Error("no frame"))), "image/png");
    };
    video.onerror = () => reject(new Error(`cannot decode ${url}`));
    video.src = url;
  });
}

class PromptEditor {
  constructor(node, promptWidget, pictureInput) {
    this.node = node;
    this.promptWidget = promptWidget;
    this.pictureInput = pictureInput;
    this.image = new Image();
    this.imageUrl = null;
    this.drag = null;
    this.shownValue = null;

    this.element = document.createElement("div");
    this.element.className = "pam-prompt-editor";
    this.element.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;";
    // The canvas is positioned absolutely in a flexible frame so that its pixel size (set on every draw)
    // never feeds back into the node's layout (Vue nodes size DOM widgets by their content).
    const frame = document.createElement("div");
    frame.style.cssText = "position:relative;flex:1;min-height:160px;";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "position:absolute;inset:0;width:100%;height:100%;background:#111;" +
      "border-radius:4px;cursor:crosshair;";
    frame.append(this.canvas);
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;gap:6px;align-items:center;font:11px sans-serif;color:#aaa;";
    this.status = document.createElement("span");
    this.status.style.flex = "1";
    const clear = document.createElement("button");
    clear.textContent = "Clear";
    clear.className = "pam-prompt-clear";
    clear.onclick = () => this.write({ positive: [], negative: [], boxes: [] });
    bar.append(this.status, clear);
    this.element.append(frame, bar);

    this.image.onload = () => {
      this.element.dataset.imageLoaded = `${this.image.naturalWidth}x${this.image.naturalHeight}`;
      this.draw();
    };
    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("contextmenu", (e) => { // right-click is ours, not the node menu's
      e.preventDefault();
      e.stopPropagation();
    });
    // The image input and the prompt text may change at any time (links, typing, undo): follow them.
    this.timer = setInterval(() => this.refresh(), 400);
  }

  destroy() {
    clearInterval(this.timer);
  }

  refresh() {
    const source = pictureSource(this.node, this.pictureInput);
    const url = source?.url ?? null;
    if (url !== this.imageUrl) {
      this.imageUrl = url;
      delete this.element.dataset.imageLoaded;
      if (this.image.src.startsWith("blob:")) URL.revokeObjectURL(this.image.src);
      this.image.removeAttribute("src");
      if (source?.video) {
        firstFrameUrl(url).then((frame) => { if (this.imageUrl === url) this.image.src = frame; }, () => {});
      } else if (url) {
        this.image.src = url;
      }
      this.draw();
    }
    if (this.promptWidget.value !== this.shownValue) this.draw();
  }

  hasImage() {
    return this.imageUrl && this.image.complete && this.image.naturalWidth > 0;
  }

  // Image pixels <-> canvas CSS pixels: the image is fitted into the canvas, centred.
  layout() {
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    const iw = this.image.naturalWidth, ih = this.image.naturalHeight;
    const scale = Math.min(w / iw, h / ih);
    return { scale, x: (w - iw * scale) / 2, y: (h - ih * scale) / 2, iw, ih };
  }

  toImage(event) {
    const rect = this.canvas.getBoundingClientRect(); // includes the graph's zoom transform
    const cssX = ((event.clientX - rect.left) / rect.width) * this.canvas.clientWidth;
    const cssY = ((event.clientY - rect.top) / rect.height) * this.canvas.clientHeight;
    const l = this.layout();
    const x = (cssX - l.x) / l.scale, y = (cssY - l.y) / l.scale;
    return { x, y, inside: x >= 0 && y >= 0 && x <= l.iw && y <= l.ih, screenX: event.clientX, screenY: event.clientY };
  }

  onPointerDown(event) {
    event.preventDefault();
    event.stopPropagation();
    if (!this.hasImage()) return;
    const at = this.toImage(event);
    if (!at.inside) return;
    if (event.button === 2) {
      this.add("negative", at);
    } else if (event.button === 0) {
      this.drag = { start: at, end: at };
      this.canvas.setPointerCapture(event.pointerId);
    }
  }

  onPointerMove(event) {
    if (!this.drag) return;
    this.drag.end = this.toImage(event);
    this.draw();
  }

  onPointerUp(event) {
    if (!this.drag || event.button !== 0) return;
    const { start } = this.drag;
    const end = this.toImage(event);
    this.drag = null;
    if (Math.hypot(end.screenX - start.screenX, end.screenY - start.screenY) < DRAG_PIXELS) {
      this.add("positive", start);
      return;
    }
    const l = this.layout();
    const clamp = (v, max) => round(Math.min(Math.max(v, 0), max));
    const box = [clamp(Math.min(start.x, end.x), l.iw), clamp(Math.min(start.y, end.y), l.ih),
                 clamp(Math.max(start.x, end.x), l.iw), clamp(Math.max(start.y, end.y), l.ih)];
    const prompt = this.read();
    prompt.boxes.push(box);
    this.write(prompt);
  }

  read() {
    return parsePrompt(this.promptWidget.value) ?? { positive: [], negative: [], boxes: [] };
  }

  add(kind, at) {
    const prompt = this.read();
    prompt[kind].push({ x: round(at.x), y: round(at.y) });
    this.write(prompt);
  }

  write(prompt) {
    const value = JSON.stringify(prompt);
    this.promptWidget.value = value;
    this.promptWidget.callback?.(value, app.canvas, this.node);
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.change?.();
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    this.shownValue = this.promptWidget.value;
    const prompt = parsePrompt(this.shownValue);
    const counts = prompt ? `${prompt.positive.length} positive, ${prompt.negative.length} negative, ` +
      `${prompt.boxes.length} box${prompt.boxes.length === 1 ? "" : "es"}` : "prompt is not valid JSON";
    if (!this.hasImage()) {
      ctx.fillStyle = "#888";
      ctx.font = "12px sans-serif";
      ctx.fillText("Connect a Load Image (or Load Video) node to click on its picture.", 8, 20);
      this.status.textContent = counts;
      return;
    }
    const l = this.layout();
    ctx.drawImage(this.image, l.x, l.y, l.iw * l.scale, l.ih * l.scale);
    const px = (x) => l.x + x * l.scale, py = (y) => l.y + y * l.scale;
    ctx.lineWidth = 2;
    const boxes = [...(prompt?.boxes ?? [])];
    if (this.drag) {
      const { start, end } = this.drag;
      boxes.push([start.x, start.y, end.x, end.y]);
    }
    ctx.strokeStyle = COLORS.box;
    for (const [x0, y0, x1, y1] of boxes) ctx.strokeRect(px(x0), py(y0), px(x1) - px(x0), py(y1) - py(y0));
    for (const kind of ["positive", "negative"]) {
      ctx.fillStyle = COLORS[kind];
      for (const p of prompt?.[kind] ?? []) {
        const [x, y] = Array.isArray(p) ? p : [p.x, p.y];
        ctx.beginPath();
        ctx.arc(px(x), py(y), 6, 0, 2 * Math.PI);
        ctx.fill();
        ctx.lineWidth = 3; // dark then light ring: visible on any background
        ctx.strokeStyle = "#000";
        ctx.stroke();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#fff";
        ctx.stroke();
      }
    }
    this.status.textContent = `${counts} · left-click +, right-click −, drag = box`;
  }
}

app.registerExtension({
  name: "pam.promptEditor",
  async nodeCreated(node) {
    const pictureInput = PICTURE_INPUTS[node.comfyClass];
    const promptWidget = node.widgets?.find((w) => w.name === "prompt");
    if (!pictureInput || !promptWidget) return;
    const editor = new PromptEditor(node, promptWidget, pictureInput);
    const widget = node.addDOMWidget("prompt_editor", "pam_prompt_editor", editor.element, {
      serialize: false,
      getMinHeight: () => 260,
    });
    widget.serialize = false; // display only: the prompt widget holds the value
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      editor.destroy();
      return onRemoved?.apply(this, arguments);
    };
    node.setSize?.([Math.max(node.size[0], 420), Math.max(node.size[1], 640)]);
  },
});
