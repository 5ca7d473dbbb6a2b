// Drives the serve web page in headless Chromium like a user: pick a photo, wait for the result
// grid, check the first result's label, then draw a box on the photo and check that a new search
// ran. Usage: node search_page.mjs URL PHOTO EXPECTED_LABEL   (CHROMIUM overrides the browser path)
import { chromium } from 'playwright-core';

const [url, photo, expected] = process.argv.slice(2);
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
  console.log(JSON.stringify({ label, thumbnail, status, boxedStatus }));
  if (label !== expected) throw new Error(`first result has label ${label}, expected ${expected}`);
  if (boxedStatus !== 200) throw new Error(`boxed search answered ${boxedStatus}`);
} finally {
  await browser.close();
}
