// Drives the serve web page in headless Chromium like a user: pick a photo, wait for the result
// grid, check the first result's label, then draw a box on the photo and check that a new search
// ran, then click "similar" under the first result (a search by that catalogue item, which must
// not list the item itself), then pick two photos at once (one fused search).
// Usage: node search_page.mjs URL PHOTO EXPECTED_LABEL [SECOND_PHOTO]
// (CHROMIUM overrides the browser path)
import { chromium } from 'playwright-core';

const [url, photo, expected, second] = process.argv.slice(2);
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
  console.log(JSON.stringify({ label, thumbnail, status, boxedStatus, similarStatus, similarIds, fusedStatus, fusedText }));
  if (label !== expected) throw new Error(`first result has label ${label}, expected ${expected}`);
  if (boxedStatus !== 200) throw new Error(`boxed search answered ${boxedStatus}`);
  if (similarStatus !== 200) throw new Error(`similar answered ${similarStatus}`);
  if (similarIds.length === 0 || similarIds.includes(itemId)) throw new Error(`similar to ${itemId}: ${similarIds}`);
  if (second && fusedStatus !== 200) throw new Error(`fused search answered ${fusedStatus}`);
} finally {
  await browser.close();
}
