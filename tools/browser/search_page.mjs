// Drives the serve web page in headless Chromium like a user: pick a photo, wait for the result
// grid, check the first result's label, then draw a box on the photo and check that a new search
// ran, then click "similar" under the first result (a search by that catalogue item, which must
// not list the item itself), then pick two photos at once (one fused search), then a photo of a
// cluttered scene without a box (the page asks for `box=auto` and draws the box the server
// found), then a photo of a product the catalogue does not hold (the page says so and still
// lists the nearest items), then a metadata filter typed into the filter box (every result
// then shows that metadata under it).
// Usage: node search_page.mjs URL PHOTO EXPECTED_LABEL [SECOND_PHOTO [SCENE_PHOTO ABSENT_PHOTO
//        [FILTER]]]  (FILTER: one name=value)
// (CHROMIUM overrides the browser path)
import { chromium } from 'playwright-core';

const [url, photo, expected, second, scenePhoto, absentPhoto, filter] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  const first = page.waitForResponse(r => r.url().includes('/search'));
  await page.setInputFiles('#file', photo);
  if ((await first).status() !== 200) throw new Error(`search answered ${(await first).status()}`);
  await page.waitForSelector('#results .hit img');
  const label = await page.$eval('#results .hit', el => el.dataset.label);
  // The thumbnail is a separate request made when the grid appears: wait for it (up to 10 s)
  // rather than race it.
  const thumbnail = await page
    .waitForFunction(() => {
      const img = document.querySelector('#results .hit img');
      return img && img.complete && img.naturalWidth > 0;
    }, null, { timeout: 10000 })
    .then(() => true, () => false);
  const status = await page.textContent('#status');
  // Draw a box over the middle of the photo: the page searches again with `bbox`.
  const img = await page.$('#preview');
  const b = await img.boundingBox();
  const boxed = page.waitForResponse(r => r.url().includes('bbox='));
  await page.mouse.move(b.x + b.width * 0.25, b.y + b.height * 0.25);
  await page.mouse.down();
  await page.mouse.move(b.x + b.width * 0.75, b.y + b.height * 0.75, { steps: 5 });
  await page.mouse.up();
  const boxedStatus = (await boxed).status();
  // The boxed search has answered; wait until the page has drawn it ("Searching…" is shown from
  // the request until the grid is replaced).
  await page.waitForFunction(() => !document.querySelector('#status').textContent.includes('Searching'));
  // "similar" under the first result: a search by that item, which is not among its results.
  const itemId = await page.$eval('#results .hit', el => el.dataset.id);
  const bySimilar = page.waitForResponse(r => r.url().includes(`/items/${itemId}/similar`));
  await page.click('#results .hit .similar');
  const similarStatus = (await bySimilar).status();
  await page.waitForFunction(id => document.querySelector('#status').textContent.includes(`items like #${id}`), itemId);
  const similarIds = await page.$$eval('#results .hit', els => els.map(el => el.dataset.id));
  // Two photos at once: one request with two image fields.
  let fusedStatus = null, fusedText = null;
  if (second) {
    const fused = page.waitForResponse(r => r.url().includes('/search'));
    await page.setInputFiles('#file', [photo, second]);
    fusedStatus = (await fused).status();
    await page.waitForFunction(() => document.querySelector('#status').textContent.includes('2 photos together'));
    fusedText = await page.textContent('#status');
  }
  // A scene without a box: the page searches with box=auto and draws the box it got back.
  let scene = null;
  if (scenePhoto) {
    const auto = page.waitForResponse(r => r.url().includes('box=auto'));
    await page.setInputFiles('#file', scenePhoto);
    const reply = await auto;
    const body = await reply.json();
    await page.waitForFunction(() => !document.querySelector('#status').textContent.includes('Searching'));
    scene = {
      status: reply.status(),
      served: body.box,
      drawn: await page.$eval('#box', el => el.dataset.auto),
      visible: await page.$eval('#box', el => getComputedStyle(el).display !== 'none'),
      label: await page.$eval('#results .hit', el => el.dataset.label),
    };
  }
  // A product the catalogue does not hold: "not in the catalogue", nearest items still listed.
  let absent = null;
  if (absentPhoto) {
    const answered = page.waitForResponse(r => r.url().includes('/search'));
    await page.setInputFiles('#file', absentPhoto);
    await answered;
    await page.waitForFunction(() => !document.querySelector('#status').textContent.includes('Searching'));
    absent = {
      verdict: await page.textContent('#verdict'),
      hits: await page.$$eval('#results .hit', els => els.length),
    };
  }
  // A filter typed into the box and Enter: the last search again, only matching items.
  let filtered = null;
  if (filter) {
    const answered = page.waitForResponse(r => r.url().includes('filter='));
    await page.fill('#filter', filter);
    await page.press('#filter', 'Enter');
    const reply = await answered;
    await page.waitForFunction(() => !document.querySelector('#status').textContent.includes('Searching'));
    filtered = {
      status: reply.status(),
      metas: await page.$$eval('#results .hit .meta', els => els.map(el => el.textContent)),
    };
  }
  console.log(JSON.stringify({ label, thumbnail, status, boxedStatus, similarStatus, similarIds, fusedStatus, fusedText, scene, absent, filtered }));
  if (label !== expected) throw new Error(`first result has label ${label}, expected ${expected}`);
  if (boxedStatus !== 200) throw new Error(`boxed search answered ${boxedStatus}`);
  if (similarStatus !== 200) throw new Error(`similar answered ${similarStatus}`);
  if (similarIds.length === 0 || similarIds.includes(itemId)) throw new Error(`similar to ${itemId}: ${similarIds}`);
  if (second && fusedStatus !== 200) throw new Error(`fused search answered ${fusedStatus}`);
  if (scene) {
    if (scene.status !== 200 || !scene.served) throw new Error(`box=auto found no box: ${JSON.stringify(scene)}`);
    if (!scene.visible || scene.drawn !== scene.served.map(Math.round).join(',')) throw new Error(`box not drawn: ${JSON.stringify(scene)}`);
    if (scene.label !== expected) throw new Error(`scene: first result has label ${scene.label}, expected ${expected}`);
  }
  if (absent && (!absent.verdict.includes('Not in the catalogue') || absent.hits === 0)) {
    throw new Error(`absent product: ${JSON.stringify(absent)}`);
  }
  if (filtered) {
    const shown = filter.replace('=', ': ');
    if (filtered.status !== 200 || filtered.metas.length === 0 || !filtered.metas.every(m => m.includes(shown))) {
      throw new Error(`filter ${filter}: ${JSON.stringify(filtered)}`);
    }
  }
} finally {
  await browser.close();
}
