#!/usr/bin/env node
// A net-ipc peer driven over stdin/stdout with JSON lines, for the interop tests.
//
//   node tests/node/peer.js server '{"path": "/tmp/ipcXXXX/s"}'
//   node tests/node/peer.js client '{"path": "/tmp/ipcXXXX/s", "messagepack": true}'
//
// argv[3] is passed to net-ipc's Server / Client constructor as is, except that
// a client gets reconnect:false unless the options say otherwise.
//
// stdout: one JSON object per line, either an event  {"event": name, ...}
//         or the reply to a command                  {"reply": id, "ok": true, "result": ...}
//                                                     {"reply": id, "ok": false, "error": "..."}
// stdin:  one JSON command per line: {"id": any, "cmd": name, ...arguments}
//
// Values are carried in JSON with two escapes, both ways:
//   {"$bytes": "<base64>"}   a Buffer / Uint8Array (msgpack bin)
//   {"$undefined": true}     undefined (net-ipc answers an unhandled request with it)
// A BigInt is reported as {"$bigint": "<decimal>"}, an Error as {"$error": "<message>"}.
//
// The process exits when stdin closes or on the "exit" command.
"use strict";

const { Server, Client } = require("net-ipc");

const role = process.argv[2];
let options;
try {
	options = process.argv[3] ? JSON.parse(process.argv[3]) : {};
} catch(e) {
	process.stderr.write(`peer.js: bad options JSON: ${e.message}\n`);
	process.exit(2);
}
if(role !== "server" && role !== "client") {
	process.stderr.write("usage: peer.js server|client [options-json]\n");
	process.exit(2);
}

// ---------------------------------------------------------------- encoding

function encode(value) {
	if(value === undefined) { return { $undefined: true }; }
	if(value === null) { return null; }
	if(typeof value === "bigint") { return { $bigint: value.toString() }; }
	if(typeof value === "number") { return Number.isFinite(value) ? value : null; }
	if(typeof value !== "object") { return value; }
	if(Buffer.isBuffer(value) || value instanceof Uint8Array) {
		return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
	}
	if(value instanceof Error) { return { $error: value.message }; }
	if(Array.isArray(value)) { return value.map(encode); }
	if(value instanceof Map) {
		const out = {};
		for(const [k, v] of value) { out[String(k)] = encode(v); }
		return out;
	}
	if(typeof value.toJSON === "function") { return encode(value.toJSON()); }
	const out = {};
	for(const key of Object.keys(value)) { out[key] = encode(value[key]); }
	return out;
}

function decode(value) {
	if(value === null || typeof value !== "object") { return value; }
	if(Array.isArray(value)) { return value.map(decode); }
	const keys = Object.keys(value);
	if(keys.length === 1 && keys[0] === "$bytes" && typeof value.$bytes === "string") {
		return Buffer.from(value.$bytes, "base64");
	}
	if(keys.length === 1 && keys[0] === "$undefined" && value.$undefined === true) {
		return undefined;
	}
	const out = {};
	for(const key of keys) { out[key] = decode(value[key]); }
	return out;
}

function describe(reason) {
	if(reason === undefined || reason === null) { return reason === null ? null : undefined; }
	if(reason instanceof Error) { return reason.message; }
	return reason;
}

function out(object) {
	process.stdout.write(`${JSON.stringify(object)}\n`);
}

function event(name, fields = {}) {
	out({ event: name, ...fields });
}

// ---------------------------------------------------------------- request behaviour
//   "echo"      (default) a server echoes {"cmd":"echo"} requests and answers pub/sub;
//               anything else gets {"echo": data}. A client answers {"echo": data}.
//   "silent"    the request listener never responds (the requester times out)
//   "unhandled" no request listener at all: net-ipc answers undefined by itself

let requestMode = "echo";

// ---------------------------------------------------------------- server side

const subscriptions = new Map(); // connection id -> Set(topic)

function topicsOf(value) {
	return Array.isArray(value) ? value.map(String) : [String(value)];
}

function isObject(value) {
	return value !== null && typeof value === "object" && !Array.isArray(value) && !Buffer.isBuffer(value);
}

async function publish(topic, message) {
	let count = 0;
	for(const connection of peer.connections.slice()) {
		const topics = subscriptions.get(connection.id);
		if(topics && topics.has(topic)) {
			const sent = await connection.send({ pub: topic, message });
			if(sent instanceof Error) { throw sent; }
			count++;
		}
	}
	return count;
}

async function serverRequest(data, respond, connection) {
	event("request", { data: encode(data), id: connection.id });
	if(requestMode === "silent") { return; }
	let answer;
	if(isObject(data) && "sub" in data) {
		let topics = subscriptions.get(connection.id);
		if(!topics) {
			topics = new Set();
			subscriptions.set(connection.id, topics);
		}
		for(const t of topicsOf(data.sub)) { topics.add(t); }
		answer = { result: true };
	} else if(isObject(data) && "unsub" in data) {
		const topics = subscriptions.get(connection.id);
		let removed = false;
		for(const t of topicsOf(data.unsub)) {
			if(topics && topics.delete(t)) { removed = true; }
		}
		answer = { result: removed };
	} else if(isObject(data) && "pub" in data) {
		const count = await publish(String(data.pub), data.message);
		event("published", { topic: String(data.pub), message: encode(data.message), count });
		answer = { result: true };
	} else if(isObject(data) && data.cmd === "echo") {
		answer = data;
	} else {
		answer = { echo: data };
	}
	const result = await respond(answer);
	if(result instanceof Error) { throw result; }
}

function connectionFlags(connection) {
	const socket = connection.connection;
	return {
		compress: Boolean(socket && socket.zlib),
		messagepack: Boolean(socket && socket.msgpack)
	};
}

function makeServer() {
	const server = new Server(options);
	server.on("ready", address => event("ready", { address }));
	server.on("error", (error, connection) => event("error", {
		message: error instanceof Error ? error.message : String(error),
		id: connection ? connection.id : null
	}));
	server.on("connect", (connection, payload) => event("connect", {
		id: connection.id,
		payload: encode(payload),
		...connectionFlags(connection)
	}));
	server.on("disconnect", (connection, reason) => {
		subscriptions.delete(connection.id);
		event("disconnect", { id: connection.id, reason: encode(describe(reason)) });
	});
	server.on("close", () => event("close"));
	server.on("message", (data, connection) => event("message", { data: encode(data), id: connection.id }));
	server.on("request", onRequest);
	return server;
}

// ---------------------------------------------------------------- client side

async function clientRequest(data, respond) {
	event("request", { data: encode(data) });
	if(requestMode === "silent") { return; }
	const result = await respond({ echo: data });
	if(result instanceof Error) { throw result; }
}

function makeClient() {
	if(options.reconnect === undefined) { options.reconnect = false; }
	const client = new Client(options);
	client.on("ready", extras => event("ready", { extras: encode(extras), id: client.id }));
	client.on("error", error => event("error", { message: error instanceof Error ? error.message : String(error) }));
	client.on("status", status => event("status", { status }));
	client.on("close", reason => event("close", { reason: encode(describe(reason)) }));
	client.on("message", data => event("message", { data: encode(data) }));
	client.on("request", onRequest);
	return client;
}

function onRequest(...args) {
	const handler = role === "server" ? serverRequest : clientRequest;
	handler(...args).catch(e => event("error", { message: `request handler: ${e && e.message || e}` }));
}

function setRequestMode(mode) {
	if(!["echo", "silent", "unhandled"].includes(mode)) { throw new Error(`unknown request mode ${mode}`); }
	requestMode = mode;
	peer.removeAllListeners("request");
	if(mode !== "unhandled") { peer.on("request", onRequest); }
}

const peer = role === "server" ? makeServer() : makeClient();

// ---------------------------------------------------------------- commands

function target(cmd) {
	if(role === "client") { return peer; }
	const connections = peer.connections;
	if(cmd.to === undefined || cmd.to === null) {
		if(connections.length !== 1) {
			throw new Error(`"to" is required: the server has ${connections.length} connections`);
		}
		return connections[0];
	}
	const found = connections.find(c => c.id === cmd.to);
	if(!found) { throw new Error(`no connection with id ${cmd.to}`); }
	return found;
}

function timeoutOf(cmd) {
	return cmd.timeout === undefined ? 10000 : cmd.timeout;
}

function settled(ids, results) {
	return results.map((r, i) => r.status === "fulfilled"
		? { id: ids[i], status: "fulfilled", value: encode(r.value) }
		: { id: ids[i], status: "rejected", reason: encode(describe(r.reason)) });
}

// net-ipc resolves (not rejects) some failed writes with an Error object.
function checked(result) {
	if(result instanceof Error) { throw result; }
	return result;
}

const commands = {
	async start() {
		if(role !== "server") { throw new Error("start is a server command"); }
		await peer.start();
		const address = peer.server.address();
		return typeof address === "object" && address ? `${address.address}:${address.port}` : address;
	},
	async connect(cmd) {
		if(role !== "client") { throw new Error("connect is a client command"); }
		let extras;
		peer.once("ready", e => { extras = e; });
		await peer.connect(decode(cmd.payload));
		return { id: peer.id, extras: encode(extras) };
	},
	async send(cmd) {
		checked(await target(cmd).send(decode(cmd.data)));
		return true;
	},
	async request(cmd) {
		return encode(await target(cmd).request(decode(cmd.data), timeoutOf(cmd)));
	},
	async ping(cmd) {
		return await target(cmd).ping(decode(cmd.data), timeoutOf(cmd));
	},
	async ping_all(cmd) {
		const ids = peer.connections.map(c => c.id);
		return settled(ids, await peer.ping(decode(cmd.data), timeoutOf(cmd)));
	},
	async survey(cmd) {
		const ids = peer.connections.map(c => c.id);
		return settled(ids, await peer.survey(decode(cmd.data), timeoutOf(cmd)));
	},
	async broadcast(cmd) {
		await peer.broadcast(decode(cmd.data));
		return peer.connections.map(c => c.id);
	},
	async publish(cmd) {
		return await publish(String(cmd.topic), decode(cmd.message));
	},
	async subscriptions() {
		const result = {};
		for(const [id, topics] of subscriptions) { result[id] = [...topics]; }
		return result;
	},
	async close(cmd) {
		const allow = Boolean(cmd.allowReconnect);
		if(role === "server" && (cmd.to === undefined || cmd.to === null)) {
			await peer.close(allow);
			return true;
		}
		return await target(cmd).close(decode(cmd.reason), allow);
	},
	async destroy(cmd) {
		if(role === "server" && (cmd.to === undefined || cmd.to === null)) {
			for(const c of peer.connections.slice()) { c.destroy(); }
			if(peer.server) { peer.server.close(); }
			return true;
		}
		return target(cmd).destroy(cmd.reason === undefined || cmd.reason === null ? undefined : new Error(String(cmd.reason)));
	},
	async connections() {
		if(role !== "server") { throw new Error("connections is a server command"); }
		return peer.connections.map(c => ({ id: c.id, connectedAt: c.connectedAt, ...connectionFlags(c) }));
	},
	async status() {
		return role === "client" ? { status: peer.status, id: peer.id } : { listening: Boolean(peer.server) };
	},
	async set(cmd) {
		if(cmd.requests !== undefined) { setRequestMode(cmd.requests); }
		return { requests: requestMode };
	},
	async exit() {
		return true;
	}
};

let exiting = false;

function shutdown(code) {
	if(exiting) { return; }
	exiting = true;
	try {
		if(role === "client") {
			peer.destroy();
		} else {
			for(const c of peer.connections.slice()) { c.destroy(); }
			if(peer.server) { peer.server.close(); }
		}
	} catch(e) { /* exiting anyway */ }
	// let stdout drain before leaving
	process.stdout.write("", () => process.exit(code));
}

async function handle(line) {
	if(!line.trim()) { return; }
	let cmd;
	try {
		cmd = JSON.parse(line);
	} catch(e) {
		event("error", { message: `bad command line: ${e.message}` });
		return;
	}
	const fn = Object.prototype.hasOwnProperty.call(commands, cmd.cmd) ? commands[cmd.cmd] : null;
	try {
		if(!fn) { throw new Error(`unknown command ${cmd.cmd}`); }
		const result = await fn(cmd);
		out({ reply: cmd.id, ok: true, result: result === undefined ? null : result });
	} catch(e) {
		out({ reply: cmd.id, ok: false, error: String(e && e.message || e) });
	}
	if(cmd.cmd === "exit") { shutdown(0); }
}

process.on("unhandledRejection", reason => {
	event("error", { message: `unhandled rejection: ${reason && reason.message || reason}` });
});

let pending = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", chunk => {
	pending += chunk;
	let index;
	while((index = pending.indexOf("\n")) > -1) {
		const line = pending.slice(0, index);
		pending = pending.slice(index + 1);
		handle(line);
	}
});
process.stdin.on("end", () => {
	if(pending) { handle(pending); }
	shutdown(0);
});
process.stdin.on("error", () => shutdown(0));
event("spawned", { role, pid: process.pid });
