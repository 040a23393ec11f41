// Headless Chromium against a running ComfyUI (used by test_comfy_nodes.py): builds Load Image -> PAM Segment &
// Describe, clicks the editor (left = positive point, right = negative point, drag = box), reads the prompt
// widget, its text box and app.graphToPrompt(), saves a screenshot, then loads every example workflow and
// records its graphToPrompt() output, the picture size each editor shows, and a screenshot.
// usage: NODE_PATH=build/comfyui/node_modules node comfy_browser.cjs URL CLICKS_JSON EXAMPLES_DIR OUT_DIR TAG
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, clicksJson, examplesDir, outDir, tag] = process.argv.slice(2);
const clicks = JSON.parse(clicksJson); // {positive: [x, y], negative: [x, y], box: [x0, y0, x1, y1]} in image pixels

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  const result = { console_errors: [], examples: {}, example_editor_images: {} };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("console", (msg) => { if (msg.type() === "error") result.console_errors.push(msg.text()); });
    page.on("pageerror", (err) => result.console_errors.push(String(err)));
    await page.goto(url);
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph
      && window.app.extensions?.some((e) => e.name === "pam.promptEditor"), null, { timeout: 120000 });
    await page.keyboard.press("Escape");

    result.node_id = await page.evaluate(() => {
      const graph = window.app.graph;
      graph.clear();
      const load = window.LiteGraph.createNode("LoadImage");
      load.pos = [90, 110];
      graph.add(load);
      load.widgets.find((w) => w.name === "image").value = "pam_example.png";
      const pam = window.LiteGraph.createNode("PAMSegmentDescribe");
      pam.pos = [430, 90];
      graph.add(pam);
      pam.setSize([520, 780]);
      load.connect(0, pam, pam.inputs.findIndex((i) => i.name === "image"));
      window.app.canvas.ds.offset = [0, 0];
      window.app.canvas.ds.scale = 1;
      window.app.canvas.setDirty(true, true);
      return pam.id;
    });
    const editor = page.locator(".pam-prompt-editor");
    await page.waitForSelector(".pam-prompt-editor[data-image-loaded]", { timeout: 60000 });
    result.image_size = await editor.getAttribute("data-image-loaded");
    const canvas = editor.locator("canvas");
    const [iw, ih] = result.image_size.split("x").map(Number);
    // Image pixels -> page pixels, measured anew before each action (the node may re-lay itself out).
    result.canvas_boxes = []; // where the editor was at each action (diagnostics)
    const toPage = async (x, y) => {
      const box = await canvas.boundingBox();
      result.canvas_boxes.push(box);
      const fit = await canvas.evaluate((c) => ({ w: c.clientWidth, h: c.clientHeight }));
      const scale = Math.min(fit.w / iw, fit.h / ih);
      return {
        x: box.x + ((fit.w - iw * scale) / 2 + x * scale) * (box.width / fit.w),
        y: box.y + ((fit.h - ih * scale) / 2 + y * scale) * (box.height / fit.h),
      };
    };
    const positive = await toPage(...clicks.positive);
    await page.mouse.click(positive.x, positive.y);
    await page.waitForTimeout(300);
    const negative = await toPage(...clicks.negative);
    await page.mouse.click(negative.x, negative.y, { button: "right" });
    await page.waitForTimeout(300);
    const from = await toPage(clicks.box[0], clicks.box[1]), to = await toPage(clicks.box[2], clicks.box[3]);
    await page.mouse.move(from.x, from.y);
    await page.mouse.down();
    await page.mouse.move(to.x, to.y, { steps: 8 });
    await page.mouse.up();
    await page.waitForTimeout(300);
    result.canvas_boxes.push(await canvas.boundingBox());

    Object.assign(result, await page.evaluate(async (id) => {
      const node = window.app.graph.getNodeById(id);
      const widget = node.widgets.find((w) => w.name === "prompt");
      const apiPrompt = await window.app.graphToPrompt();
      const textBox = widget.inputEl ?? document.querySelector(`[data-node-id="${id}"] textarea`);
      return {
        widget_value: widget.value,
        text_box_value: textBox ? textBox.value : null,
        api_prompt_value: apiPrompt.output[String(id)].inputs.prompt,
        workflow_widgets_values: apiPrompt.workflow.nodes.find((n) => String(n.id) === String(id)).widgets_values,
      };
    }, result.node_id));
    result.status_text = await editor.locator("span").first().textContent();
    await page.screenshot({ path: path.join(outDir, `editor-${tag}.png`) });

    for (const file of fs.readdirSync(examplesDir).filter((f) => f.endsWith(".json")).sort()) {
      const name = path.basename(file, ".json");
      const workflow = JSON.parse(fs.readFileSync(path.join(examplesDir, file), "utf8"));
      const output = await page.evaluate(async (flow) => {
        await window.app.loadGraphData(flow);
        return (await window.app.graphToPrompt()).output;
      }, workflow);
      // the editors show their node's picture (a video's first frame for PAM Video) once it has loaded
      await page.waitForFunction(() => [...document.querySelectorAll(".pam-prompt-editor")]
        .every((e) => e.dataset.imageLoaded), null, { timeout: 30000 }).catch(() => {});
      await page.waitForTimeout(500);
      result.example_editor_images[name] = await page.evaluate(() => [...document.querySelectorAll(".pam-prompt-editor")]
        .map((e) => e.dataset.imageLoaded ?? null));
      result.examples[name] = output;
      await page.screenshot({ path: path.join(outDir, `${name}-${tag}.jpg`), type: "jpeg", quality: 80 });
    }
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(outDir, `browser-${tag}.json`), JSON.stringify(result, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
