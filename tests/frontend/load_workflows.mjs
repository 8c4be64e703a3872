// Loads workflows into the real ComfyUI frontend (headless Chromium), lets their previews load, reads back the
// node boxes the frontend really draws and any dialog it opened, and takes a screenshot of each.
//   node load_workflows.mjs <server url> <out dir> <workflow.json ...>     (needs playwright-core + chromium)
// Run through `python tests/comfyui_host.py --frontend DIR`, which checks the boxes for overlaps.
import { chromium } from 'playwright-core';
import fs from 'fs';
const [url, outDir, ...files] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'] });
const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
const errors = [];
page.on('pageerror', e => errors.push(String(e)));
await page.goto(url, { waitUntil: 'networkidle' });
await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 60000 });
const report = {};
for (const file of files) {
  const wf = JSON.parse(fs.readFileSync(file, 'utf8'));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, wf);
  await page.waitForTimeout(4000);
  const info = await page.evaluate(() => ({
    scale: window.app.canvas.ds.scale,
    nodes: window.app.graph._nodes.map(n => ({ id: n.id, type: n.type, pos: [...n.pos], size: [...n.size],
      widgets: (n.widgets || []).map(w => [w.name, typeof w.value === 'object' ? null : w.value]) })),
    dialogs: [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 300)),
  }));
  const name = file.split('/').pop().replace('.json', '');
  await page.screenshot({ path: `${outDir}/${name}.png` });
  report[name] = info;
  // close any dialog the load opened
  await page.keyboard.press('Escape');
}
fs.writeFileSync(`${outDir}/report.json`, JSON.stringify({ report, errors }, null, 1));
await browser.close();
