// gRPC-Web clients for tests/tests/grpc_web.rs, run in Node:
//   node grpc_web_client.js LIB URL CASE
// LIB: `improbable` (@improbable-eng/grpc-web over its Node HTTP
// transport: binary mode) or `text` / `binary` (Google's grpc-web, the
// browser client, over an XMLHttpRequest polyfill, in `grpcwebtext` /
// `grpcweb` mode). CASE: unary, stream, fail, stream_fail. Prints one
// JSON line: {messages, status, message, trailers}.
'use strict';
const jspb = require('google-protobuf');

const [lib, url, kase] = process.argv.slice(2);

// EchoRequest {string message = 1; int32 count = 2;} with google-protobuf's
// binary writer/reader (the wire code generated messages use).
class EchoRequest {
  constructor(message, count) {
    this.message = message;
    this.count = count || 0;
  }
  serializeBinary() {
    const w = new jspb.BinaryWriter();
    w.writeString(1, this.message);
    if (this.count) w.writeInt32(2, this.count);
    return w.getResultBuffer();
  }
}
class EchoReply {
  static deserializeBinary(bytes) {
    const r = new jspb.BinaryReader(bytes);
    const out = new EchoReply();
    out.message = '';
    while (r.nextField()) {
      if (r.isEndGroup()) break;
      if (r.getFieldNumber() === 1) out.message = r.readString();
      else r.skipField();
    }
    return out;
  }
}

const cases = {
  unary: ['Unary', false, new EchoRequest('hello')],
  stream: ['ServerStream', true, new EchoRequest('m', 5)],
  fail: ['Fail', false, new EchoRequest('x')],
  stream_fail: ['StreamFail', true, new EchoRequest('x')],
};
const [method, streaming, request] = cases[kase];
const result = { messages: [], status: null, message: '', trailers: {} };
function done() {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}
setTimeout(() => {
  result.status = 'timeout';
  done();
}, 10000);

if (lib === 'improbable') {
  const { grpc } = require('@improbable-eng/grpc-web');
  const { NodeHttpTransport } = require('@improbable-eng/grpc-web-node-http-transport');
  const desc = {
    methodName: method,
    service: { serviceName: 'echo.Echo' },
    requestStream: false,
    responseStream: streaming,
    requestType: EchoRequest,
    responseType: EchoReply,
  };
  grpc.invoke(desc, {
    request,
    host: url,
    transport: NodeHttpTransport(),
    onHeaders: () => {},
    onMessage: (m) => result.messages.push(m.message),
    onEnd: (code, msg, trailers) => {
      result.status = code;
      result.message = msg;
      trailers.forEach((k, v) => (result.trailers[k] = v.join(',')));
      done();
    },
  });
} else {
  global.XMLHttpRequest = require('xhr2');
  const { GrpcWebClientBase, MethodDescriptor, MethodType } = require('grpc-web');
  const client = new GrpcWebClientBase({ format: lib === 'text' ? 'text' : 'binary' });
  const desc = new MethodDescriptor(
    `/echo.Echo/${method}`,
    streaming ? MethodType.SERVER_STREAMING : MethodType.UNARY,
    EchoRequest,
    EchoReply,
    (r) => r.serializeBinary(),
    EchoReply.deserializeBinary,
  );
  const full = `${url}/echo.Echo/${method}`;
  if (!streaming) {
    const call = client.rpcCall(full, request, {}, desc, (err, resp) => {
      if (err) {
        result.status = err.code;
        result.message = err.message;
        Object.assign(result.trailers, err.metadata || {});
        done();
      } else {
        result.messages.push(resp.message);
      }
    });
    call.on('status', (s) => {
      if (result.status === null && s.code === 0) {
        result.status = 0;
        result.message = s.details;
        Object.assign(result.trailers, s.metadata || {});
        // The callback may come after the status.
        setImmediate(done);
      }
    });
  } else {
    const s = client.serverStreaming(full, request, {}, desc);
    s.on('data', (m) => result.messages.push(m.message));
    s.on('status', (st) => {
      Object.assign(result.trailers, st.metadata || {});
      if (st.code !== 0) {
        result.status = st.code;
        result.message = st.details;
      }
    });
    s.on('error', (e) => {
      result.status = e.code;
      result.message = e.message;
      done();
    });
    s.on('end', () => {
      if (result.status === null) result.status = 0;
      done();
    });
  }
}
