"use strict";
// net-ipc side of the benchmark suite: one script, server or client, JSON or msgpack.
//
//   node netipc_bench.js '<json spec>'
//
// The spec is the one the Python workers get (role, workload, sockdir, params,
// server_pid) plus mode ("json" | "msgpack").  A server prints READY once it
// listens; a client prints RESULT <json> and exits.  Both exit by themselves
// after params.deadline_s.  `net-ipc` resolves from the repository root's
// node_modules (npm ci there), or from NODE_PATH.

const fs = require("fs");
const path = require("path");

const spec = JSON.parse(process.argv[2] || "{}");

if (spec.role === "versions") {
	const version = name => {
		// some packages do not export package.json: walk up from their entry point
		try {
			let dir = path.dirname(require.resolve(name));
			while (dir !== path.dirname(dir)) {
				const file = path.join(dir, "package.json");
				if (fs.existsSync(file)) {
					const pkg = JSON.parse(fs.readFileSync(file, "utf8"));
					if (pkg.name === name) { return pkg.version; }
				}
				dir = path.dirname(dir);
			}
		} catch (e) { /* not installed */ }
		return "missing";
	};
	console.log(`${version("net-ipc")} (msgpackr ${version("msgpackr")})`);
	process.exit(0);
}

const { Server, Client } = require("net-ipc");

const params = spec.params;
const deadline = setTimeout(() => {
	process.stderr.write(`deadline of ${params.deadline_s} s reached\n`);
	process.exit(3);
}, params.deadline_s * 1000);
deadline.unref();

const TOPIC = "t";
// The same 212-byte (as JSON) payload as benchmarks/config.py.
const PAYLOAD = {
	id: 123456,
	method: "user.update",
	params: {
		user_id: 987654321,
		name: "Ada Lovelace",
		email: "ada@example.com",
		roles: ["admin", "editor"],
		active: true,
	},
	meta: { trace: "4bf92f3577b34da6", ts: 1732540800.123 },
};
const sockPath = path.join(spec.sockdir, "s.sock");
const messagepack = spec.mode === "msgpack";
const NO_TIMEOUT = 0; // net-ipc: 0 disables the per-request timer

function clock() {
	return process.hrtime.bigint();
}

function seconds(t0) {
	return Number(clock() - t0) / 1e9;
}

function rssKiB(pid) {
	const text = fs.readFileSync(`/proc/${pid}/status`, "ascii");
	const m = /VmRSS:\s+(\d+)/.exec(text);
	if (!m) { throw new Error(`no VmRSS for pid ${pid}`); }
	return Number(m[1]);
}

function sleep(ms) {
	return new Promise(resolve => setTimeout(resolve, ms));
}

function bigPayload(size) {
	const buf = Buffer.allocUnsafe(size);
	for (let i = 0; i < size; i++) { buf[i] = i & 255; }
	return buf;
}

function payloadLength(reply) {
	// msgpack gives back a Buffer/Uint8Array; JSON gives back {type: "Buffer", data: [...]}
	if (reply && reply.length !== undefined) { return reply.length; }
	if (reply && Array.isArray(reply.data)) { return reply.data.length; }
	return -1;
}

// ---------------------------------------------------------------------------
// server

async function serve() {
	const server = new Server({ path: sockPath });
	let count = 0;
	server.on("error", () => { /* a client going away at the end is not our business */ });
	if (spec.workload === "oneway") {
		server.on("message", () => { count++; });
		server.on("request", (req, respond) => {
			const n = count;
			count = 0;
			respond(n);
		});
	} else if (spec.workload === "fanout") {
		server.on("request", async (req, respond) => {
			await respond(true);
			for (let i = 0; i < req.n; i++) {
				await server.broadcast(PAYLOAD);
			}
		});
	} else if (spec.workload === "gather_async") {
		// what users mostly write: an async handler that awaits respond
		server.on("request", async (req, respond) => { await respond(req); });
	} else {
		server.on("request", (req, respond) => respond(req));
	}
	await server.start();
	process.stdout.write("READY\n");
}

// ---------------------------------------------------------------------------
// client

async function connect() {
	const client = new Client({ path: sockPath, messagepack, reconnect: false });
	await client.connect();
	return client;
}

async function seq(client, n) {
	const lat = new Array(n);
	for (let i = 0; i < n; i++) {
		const t0 = clock();
		await client.request(PAYLOAD);
		lat[i] = Number(clock() - t0);
	}
	return lat;
}

function seqResult(latNs) {
	const s = Float64Array.from(latNs).sort();
	const n = s.length;
	const p50 = n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
	const p99 = s[Math.min(n - 1, Math.max(0, Math.ceil(0.99 * n) - 1))];
	let sum = 0;
	for (const v of s) { sum += v; }
	return { p50_us: p50 / 1000, p99_us: p99 / 1000, mean_us: sum / n / 1000, count: n };
}

async function pipelined(client, total, window) {
	const per = Math.floor(total / window);
	let extra = total - per * window;
	const workers = [];
	const t0 = clock();
	for (let w = 0; w < window; w++) {
		const mine = per + (extra-- > 0 ? 1 : 0);
		workers.push((async () => {
			for (let i = 0; i < mine; i++) { await client.request(PAYLOAD); }
		})());
	}
	await Promise.all(workers);
	return seconds(t0);
}

async function gather(client, total, batch) {
	const t0 = clock();
	for (let left = total; left > 0; left -= batch) {
		const k = Math.min(batch, left);
		const requests = new Array(k);
		for (let i = 0; i < k; i++) { requests[i] = client.request(PAYLOAD); }
		await Promise.all(requests);
	}
	return seconds(t0);
}

async function oneway(client, n) {
	const t0 = clock();
	for (let i = 0; i < n; i++) { await client.send(PAYLOAD); }
	const count = await client.request({ cmd: "count" });
	const elapsed = seconds(t0);
	if (count !== n) { throw new Error(`server counted ${count} of ${n} messages`); }
	return elapsed;
}

async function fanout(clients, n) {
	const total = n * clients.length;
	let got = 0;
	let done;
	const finished = new Promise(resolve => { done = resolve; });
	const onMessage = () => { if (++got === total) { done(); } };
	for (const c of clients) { c.on("message", onMessage); }
	const t0 = clock();
	await clients[0].request({ cmd: "fanout", n });
	await finished;
	const elapsed = seconds(t0);
	for (const c of clients) { c.off("message", onMessage); }
	return elapsed;
}

async function connections() {
	const keep = [await connect()];
	await keep[0].request(PAYLOAD);
	await sleep(300);
	const before = rssKiB(spec.server_pid);
	let left = params.conn_n;
	while (left > 0) {
		const k = Math.min(params.conn_batch, left);
		const batch = [];
		for (let i = 0; i < k; i++) { batch.push(connect()); }
		keep.push(...await Promise.all(batch));
		left -= k;
	}
	await sleep(300);
	const after = rssKiB(spec.server_pid);
	return {
		kib_per_conn: (after - before) / params.conn_n,
		connections: params.conn_n,
		rss_before_kib: before,
		rss_after_kib: after,
	};
}

async function runClient() {
	const w = spec.workload;
	if (w === "seq_rtt") {
		const client = await connect();
		await seq(client, params.seq_warmup);
		return seqResult(await seq(client, params.seq_n));
	}
	if (w === "pipelined") {
		const client = await connect();
		await pipelined(client, params.pipe_warmup, Math.min(params.pipe_window, params.pipe_warmup));
		const elapsed = await pipelined(client, params.pipe_total, params.pipe_window);
		return { rate: params.pipe_total / elapsed, count: params.pipe_total, elapsed_s: elapsed };
	}
	if (w === "gather_async" || w === "gather_plain") {
		const client = await connect();
		await gather(client, params.gather_warmup, params.gather_batch);
		const elapsed = await gather(client, params.gather_total, params.gather_batch);
		return { rate: params.gather_total / elapsed, count: params.gather_total, elapsed_s: elapsed };
	}
	if (w === "oneway") {
		const client = await connect();
		await oneway(client, params.oneway_warmup);
		const elapsed = await oneway(client, params.oneway_n);
		return { rate: params.oneway_n / elapsed, count: params.oneway_n, elapsed_s: elapsed };
	}
	if (w === "fanout") {
		const clients = [];
		for (let i = 0; i < params.fanout_subs; i++) { clients.push(await connect()); }
		await fanout(clients, Math.max(10, Math.floor(params.fanout_n / 50)));
		const elapsed = await fanout(clients, params.fanout_n);
		const total = params.fanout_n * params.fanout_subs;
		return { rate: total / elapsed, count: total, elapsed_s: elapsed };
	}
	if (w === "big") {
		const client = await connect();
		const data = bigPayload(params.big_size);
		await client.request(data, NO_TIMEOUT);
		const t0 = clock();
		let done = 0;
		// up to big_n round trips; past big_budget_s, stop (after at least 2)
		while (done < params.big_n && (done < 2 || seconds(t0) < params.big_budget_s)) {
			const reply = await client.request(data, NO_TIMEOUT);
			if (payloadLength(reply) !== data.length) { throw new Error("short echo"); }
			done++;
		}
		const elapsed = seconds(t0);
		return {
			mb_per_s: params.big_size * done / elapsed / 1e6,
			rounds: done,
			elapsed_s: elapsed,
			payload_bytes: params.big_size,
		};
	}
	if (w === "connections") {
		return connections();
	}
	throw new Error(`unknown workload ${w}`);
}

function fail(e) {
	const message = e && e.stack ? e.stack : String(e);
	process.stderr.write(message + "\n");
	if (spec.role === "client") {
		const name = e && e.name ? e.name : "Error";
		const text = e && e.message !== undefined ? e.message : String(e);
		process.stdout.write("RESULT " + JSON.stringify({ error: `${name}: ${text}` }) + "\n");
	}
	process.exit(1);
}

if (spec.role === "server") {
	serve().catch(fail);
} else {
	runClient().then(result => {
		process.stdout.write("RESULT " + JSON.stringify(result) + "\n", () => process.exit(0));
	}).catch(fail);
}
