// Plays a person in a real browser (Debian's headless Chromium, driven by playwright-core):
// opens a link, signs in on the OAuth provider's pages, approves, and reports the page it lands
// on as JSON on stdout.
//
//   node tests/browser/sign_in.mjs URL ACCOUNT PASSWORD [--code USER_CODE]
//
// --code      enter this device code when the provider asks for one
import { chromium } from 'playwright-core';

const [url, account, password, ...rest] = process.argv.slice(2);
const option = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const code = option('--code');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { steps: [] };
try {
  const page = await browser.newPage();
  const submit = async (locator) => {
    await Promise.all([page.waitForLoadState('load').catch(() => {}), locator.click()]);
    await page.waitForTimeout(150);
  };
  await page.goto(url).catch(() => {});
  for (let i = 0; i < 20; i++) {
    await page.waitForLoadState('load').catch(() => {});
    result.steps.push(page.url());
    if (await page.locator('#result').count()) break; // the bridge's own result page
    if (await page.locator('#confirm').count()) { // the bridge's confirm page: who is linked
      result.confirmed_for = await page.locator('#matrix-user').textContent();
      await submit(page.locator('#confirm'));
      continue;
    }
    const codeInput = page.locator('input[name="user_code"]:not([type="hidden"])');
    if (code && await codeInput.count()) {
      await codeInput.fill(code);
      await submit(page.locator('button[type="submit"], input[type="submit"]').first());
      continue;
    }
    if (await page.locator('input[name="login"]').count()) {
      await page.fill('input[name="login"]', account);
      await page.fill('input[name="password"]', password);
      await submit(page.locator('#submit'));
      continue;
    }
    if (await page.locator('#allow').count()) { await submit(page.locator('#allow')); continue; }
    if (await page.locator('input[name="xsrf"]').count()) {
      await submit(page.locator('button[type="submit"], input[type="submit"]').first());
      continue;
    }
    break;
  }
  result.url = page.url();
  result.title = (await page.locator('h1').first().textContent().catch(() => null))?.trim() ?? null;
  result.message = (await page.locator('#message').textContent().catch(() => null))?.trim() ?? null;
  result.text = (await page.locator('body').innerText().catch(() => '')).slice(0, 500);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
