// A client in another language: Node.js (18 or newer, for the built-in fetch) calling an engineroom
// server over the Open Inference Protocol's REST API. No package needed.
//
// usage: node client.mjs [--url http://127.0.0.1:8000] [--model NAME] [--input request.json] [--expect outputs.json]
//
// Without --input it reads the model's metadata and sends one row of 0.01, 0.02, ... for every FP32
// input (other datatypes get 1s), free dims taken as 1. With --expect (a JSON object: output name ->
// flat list of numbers) it checks every output against it (|a-b| <= 1e-4 + 1e-4 |b|) and exits 1 on
// a difference.
import { readFileSync } from "node:fs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url ?? "http://127.0.0.1:8000";
const model = args.model ?? "mlp";

async function call(path, body) {
  const res = await fetch(`${url}${path}`, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}: ${json.error}`);
  return json;
}

let request;
if (args.input) {
  request = JSON.parse(readFileSync(args.input, "utf8"));
} else {
  const meta = await call(`/v2/models/${model}`);
  request = {
    inputs: meta.inputs.map((t) => {
      const shape = t.shape.map((d) => (d < 0 ? 1 : d));
      const n = shape.reduce((a, b) => a * b, 1);
      const data = Array.from({ length: n }, (_, i) => (t.datatype === "FP32" ? (i + 1) / 100 : 1));
      return { name: t.name, datatype: t.datatype, shape, data };
    }),
  };
}

const answer = await call(`/v2/models/${model}/infer`, request);
for (const out of answer.outputs) {
  const n = out.shape.reduce((a, b) => a * b, 1);
  if (out.data.length !== n) throw new Error(`output ${out.name}: ${out.data.length} values for shape ${out.shape}`);
  console.log(`${out.name} ${out.datatype} [${out.shape}] first values ${out.data.slice(0, 4).join(", ")}`);
}

if (args.expect) {
  const expect = JSON.parse(readFileSync(args.expect, "utf8"));
  for (const [name, want] of Object.entries(expect)) {
    const got = answer.outputs.find((o) => o.name === name);
    if (!got) throw new Error(`output ${name} missing from the answer`);
    const bad = want.findIndex((w, i) => !(Math.abs(got.data[i] - w) <= 1e-4 + 1e-4 * Math.abs(w)));
    if (got.data.length !== want.length || bad >= 0) {
      console.error(`output ${name} differs at ${bad}: got ${got.data[bad]}, expected ${want[bad]}`);
      process.exit(1);
    }
  }
  console.log("answer checked: ok");
}
