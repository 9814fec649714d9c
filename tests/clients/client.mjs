// GET each URL through the proxy named in https_proxy / http_proxy (or the upper-case names) and print the answers,
// with Node's standard library alone: Node 20's http, https and fetch ignore those variables. For https it opens a
// CONNECT tunnel and speaks TLS inside it, so the certificate is checked against Node's CAs and NODE_EXTRA_CA_CERTS.
// Usage: node client.mjs URL...
import http from "node:http";
import https from "node:https";
import tls from "node:tls";

function proxyFor(target) {
  const name = target.protocol === "https:" ? "https_proxy" : "http_proxy";
  return new URL(process.env[name] || process.env[name.toUpperCase()]);
}

function tunnel(proxy, target) {
  return new Promise((resolve, reject) => {
    http
      .request({ host: proxy.hostname, port: proxy.port, method: "CONNECT", path: target.host })
      .on("connect", (answer, socket) =>
        answer.statusCode === 200 ? resolve(socket) : reject(new Error(`CONNECT answered ${answer.statusCode}`)),
      )
      .on("error", reject)
      .end();
  });
}

async function get(target) {
  const proxy = proxyFor(target);
  let request;
  if (target.protocol === "https:") {
    const socket = await tunnel(proxy, target);
    request = (done) => https.get(target, { createConnection: () => tls.connect({ socket, host: target.hostname }) }, done);
  } else {
    // A proxy takes a plain-HTTP request with the whole URL as its target.
    const options = { host: proxy.hostname, port: proxy.port, path: target.href, headers: { Host: target.host } };
    request = (done) => http.get(options, done);
  }
  return new Promise((resolve, reject) => {
    request((response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolve({ status: response.statusCode, body: Buffer.concat(chunks) }));
    }).on("error", reject);
  });
}

for (const url of process.argv.slice(2)) {
  try {
    const { status, body } = await get(new URL(url));
    process.stdout.write(body);
    if (status !== 200) throw new Error(`${url}: HTTP ${status}`);
  } catch (error) {
    console.error(`client.mjs: ${error.code ?? ""} ${error.message}`);
    process.exit(1);
  }
}
