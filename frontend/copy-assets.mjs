// Copies the built browser files of the locked npm packages into the Python package, where
// the core and the edge serve them (sites are often offline: no CDN). Run by `make assets`
// after `npm ci`, so the same lock file always gives the same bytes.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "src", "edge2core", "web", "static", "vendor");
const files = {
  "htmx.org/dist/htmx.min.js": "htmx.min.js",
  "uplot/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
  "uplot/dist/uPlot.min.css": "uPlot.min.css",
  "mqtt/dist/mqtt.min.js": "mqtt.min.js",
};
mkdirSync(target, { recursive: true });
const versions = {};
for (const [from, to] of Object.entries(files)) {
  copyFileSync(join(here, "node_modules", from), join(target, to));
  const pkg = from.split("/")[0];
  versions[pkg] = JSON.parse(readFileSync(join(here, "node_modules", pkg, "package.json"))).version;
}
console.log(`vendored into ${target}: ${JSON.stringify(versions)}`);
