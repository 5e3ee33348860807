'use strict';
// Real Dubbo 2 / SOFA Bolt peers for meshgate's end-to-end tests, built on
// the npm packages sofa-rpc-node (RpcServer, RpcClient; Bolt natively) and
// dubbo-remoting (the Dubbo 2 protocol for them). Direct host:port, no
// registry. Installed by tests/run.sh into tests/peers/node_modules.
//
//   node rpc_peer.js server <dubbo|bolt> <port> <name>
//     Provider of com.meshgate.Echo (version 1.0 and 2.0) and
//     com.meshgate.Other: echo(x) -> {from, x}, sleep(ms), plus(a, b);
//     for the HTTP/JSON gateway: getUser(id) -> a com.meshgate.User POJO,
//     fail(msg) throws, missing(id) -> an exception object,
//     describe(...args) -> {from, args}, and Dubbo's generic $invoke;
//     com.example.UserService 1.0 (examples/http-to-dubbo.yaml).
//     Prints `READY <port>` when listening (port 0: the kernel picks it).
//   node rpc_peer.js call <dubbo|bolt> <host:port> <interface> <method> <argsJSON>
//       [count] [concurrency] [timeoutMs] [version] [group]
//     Prints one JSON line: {ok, errors: [messages], results: [first 5], from: {name: n}}
//   node rpc_peer.js loop <dubbo|bolt> <host:port> <interface> <method> <argsJSON>
//     One consumer calling in a loop, one call at a time, until stdin closes.
//     Every TCP connection it opens is reported: `CONNECT <local port>`;
//     every 10 calls: `PROGRESS <ok> <errors>`; at the end one JSON line
//     {ok, errors: [first 20], connects: [local ports], closes: n}.

const path = require('path');
const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;

const logger = {
  info() {}, warn() {}, debug() {},
  error(...a) { if (process.env.RPC_PEER_DEBUG) console.error(...a); },
};

function protocolOf(name) {
  if (name === 'dubbo') return require('dubbo-remoting');
  if (name === 'bolt') return require('sofa-bolt-node');
  throw new Error('unknown protocol ' + name);
}

async function server(proto, port, name) {
  const server = new RpcServer({ logger, port: Number(port), protocol: protocolOf(proto) });
  const impl = {
    async echo(x) { return { from: name, x }; },
    async plus(a, b) { return a + b; },
    async sleep(ms) { await new Promise(r => setTimeout(r, ms)); return name; },
    // For the HTTP/JSON gateway tests: a POJO, an exception, typed args.
    async getUser(id) {
      return { $class: 'com.meshgate.User', $: {
        id: { $class: 'long', $: Number(id) }, name: 'user' + id,
        tags: ['a', 'b'], born: new Date(86400000), boss: null,
        score: 1.5, active: true } };
    },
    async fail(msg) { throw new Error('failed: ' + msg); },
    // An exception object as a Java provider returns it (Dubbo: a result
    // with the exception flag).
    async missing(id) {
      return { $class: 'com.meshgate.UserNotFoundException',
        $: { detailMessage: 'no user ' + id } };
    },
    async describe(...args) { return { from: name, args }; },
  };
  // Dubbo's generic invocation: $invoke(method, parameterTypes, args).
  impl.$invoke = async (method, types, args) => {
    const r = await impl[method](...args);
    return { generic: true, types, result: r };
  };
  server.addService({ interfaceName: 'com.meshgate.Echo', version: '1.0' }, impl);
  server.addService({ interfaceName: 'com.meshgate.Echo', version: '2.0' }, impl);
  server.addService({ interfaceName: 'com.meshgate.Other', version: '1.0' }, impl);
  // examples/http-to-dubbo.yaml's service.
  const user = (id, name, tags) => ({ $class: 'com.example.User', $: {
    id: { $class: 'long', $: id }, name, tags } });
  server.addService({ interfaceName: 'com.example.UserService', version: '1.0' }, {
    async getUser(id) { return user(Number(id), 'user' + id, []); },
    async findUsers(name, limit) {
      return Array.from({ length: limit }, (_, i) => user(i + 1, name + (i + 1), []));
    },
    async createUser(u) { return user(100, u.name, u.tags || []); },
  });
  await server.start();
  console.log('READY ' + server.publishPort);
}

async function call(proto, host, iface, method, argsJson, count, conc, timeout, version, group) {
  count = Number(count || 1);
  conc = Number(conc || 1);
  timeout = Number(timeout || 3000);
  const client = new RpcClient({ logger, protocol: protocolOf(proto) });
  const opts = { interfaceName: iface, serverHost: host, version: version || '1.0' };
  if (group) opts.group = group;
  const consumer = client.createConsumer(opts);
  await consumer.ready();
  const args = JSON.parse(argsJson);
  const out = { ok: 0, errors: [], results: [], from: {} };
  let next = 0;
  async function worker() {
    while (next < count) {
      next++;
      try {
        const r = await consumer.invoke(method, args, { responseTimeout: timeout });
        out.ok++;
        if (out.results.length < 5) out.results.push(r);
        if (r && r.from) out.from[r.from] = (out.from[r.from] || 0) + 1;
      } catch (e) {
        if (out.errors.length < 20) out.errors.push(String(e.message || e));
      }
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  console.log(JSON.stringify(out));
  client.close && await client.close();
  process.exit(0);
}

async function loop(proto, host, iface, method, argsJson) {
  // Every socket the client opens, seen from its side: the proof that a
  // hot upgrade did not make it reconnect.
  const net = require('net');
  const connects = [];
  let closes = 0;
  const connect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function (...a) {
    this.once('connect', () => {
      connects.push(this.localPort);
      console.log('CONNECT ' + this.localPort);
    });
    this.once('close', () => { closes++; });
    return connect.apply(this, a);
  };
  const client = new RpcClient({ logger, protocol: protocolOf(proto) });
  const consumer = client.createConsumer({ interfaceName: iface, serverHost: host, version: '1.0' });
  await consumer.ready();
  const args = JSON.parse(argsJson);
  let stop = false;
  process.stdin.on('end', () => { stop = true; });
  process.stdin.on('close', () => { stop = true; });
  process.stdin.resume();
  const out = { ok: 0, errors: [], connects, closes: 0 };
  let failed = 0;
  while (!stop) {
    try {
      await consumer.invoke(method, args, { responseTimeout: 5000 });
      out.ok++;
    } catch (e) {
      failed++;
      if (out.errors.length < 20) out.errors.push(String(e.message || e));
    }
    if ((out.ok + failed) % 10 === 0) console.log('PROGRESS ' + out.ok + ' ' + failed);
  }
  out.closes = closes;
  console.log(JSON.stringify(out));
  process.exit(0);
}

const [mode, ...rest] = process.argv.slice(2);
const run = mode === 'server' ? server(...rest) : mode === 'loop' ? loop(...rest) : call(...rest);
run.catch(e => { console.error(e); process.exit(1); });
