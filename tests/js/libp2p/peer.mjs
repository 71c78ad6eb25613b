// A foreign libp2p peer for the interop tests: js-libp2p 3 (TCP, Noise, Yamux, identify, ping) and, when asked,
// the peer protocol /mcp-p2p/rpc/1.0.0 written from docs/p2p-protocol.md alone (no code shared with the sidecar).
//
//   node peer.mjs client TARGET [--secret S] [--tool NAME --args JSON]   dial, identify, ping, then rpc requests
//   node peer.mjs serve [--rpc] [--secret S] [--dial TARGET]            listen; serve identify + ping (+ rpc)
//   node peer.mjs client-only TARGET [--secret S] [--seconds N]         say hello and ping over rpc, serve nothing
//   node peer.mjs push-resets TARGET [--count N]                        open identify-push streams and reset them
//
// Every mode prints JSON lines on stdout: {"event": ...}. `serve` and `client-only` run until SIGTERM or stdin ends.
import { createHmac, createHash, randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { decode, encode } from '@msgpack/msgpack'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const PROTOCOL = '/mcp-p2p/rpc/1.0.0'
const LABEL = 'mcp-p2p network membership v1'
const REVISION = 'js-peer-1'

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

function option (name, fallback = undefined) {
  const index = process.argv.indexOf(name)
  return index >= 0 ? process.argv[index + 1] : fallback
}

// -- membership proofs (docs/p2p-protocol.md, "Membership") ------------------------------------------------------
function mac (secret, ...parts) {
  const message = Buffer.concat([LABEL, ...parts].flatMap((part, i) => (i ? [Buffer.from([0]), Buffer.from(part)] : [Buffer.from(part)])))
  return createHmac('sha256', secret).update(message).digest('hex')
}
const secretText = option('--secret')
const secret = secretText ? Buffer.from(secretText.trim()) : null

// -- frames: a 4-byte big-endian length, then one msgpack map ------------------------------------------------------
function frame (message) {
  const body = encode(message)
  const out = new Uint8Array(4 + body.length)
  new DataView(out.buffer).setUint32(0, body.length)
  out.set(body, 4)
  return out
}

class FrameReader {
  constructor () { this.buffer = new Uint8Array(0) }
  feed (chunk) {
    const bytes = chunk.subarray ? chunk.subarray() : chunk
    const joined = new Uint8Array(this.buffer.length + bytes.length)
    joined.set(this.buffer)
    joined.set(bytes, this.buffer.length)
    this.buffer = joined
    const bodies = []
    while (this.buffer.length >= 4) {
      const length = new DataView(this.buffer.buffer, this.buffer.byteOffset).getUint32(0)
      if (this.buffer.length < 4 + length) break
      bodies.push(decode(this.buffer.subarray(4, 4 + length)))
      this.buffer = this.buffer.slice(4 + length)
    }
    return bodies
  }
}

// A client on one stream: one request at a time (ids count from 1, far below 2^53).
class RpcClient {
  constructor (stream) {
    this.stream = stream
    this.reader = new FrameReader()
    this.iterator = stream[Symbol.asyncIterator]()
    this.pending = []
    this.nextId = 1
  }

  async request (op, args = {}, timeoutMs = 10000) {
    const id = this.nextId++
    this.stream.send(frame({ v: 1, k: 'req', id, op, a: args, t: timeoutMs }))
    const reply = await this.next()
    if (reply.id !== id) throw new Error(`reply to ${reply.id}, expected ${id}`)
    return reply
  }

  async sendRaw (message) {
    this.stream.send(frame(message))
    return await this.next()
  }

  async next () {
    while (this.pending.length === 0) {
      const { value, done } = await this.iterator.next()
      if (done) throw new Error('stream ended')
      this.pending.push(...this.reader.feed(value))
    }
    return this.pending.shift()
  }
}

function helloBody (node, auth) {
  const body = {
    version: 'js-peer',
    wire_version: 1,
    addrs: node.getMultiaddrs().map((ma) => ma.toString().replace(/\/p2p\/.*$/, '')),
    capabilities: { tools: mode === 'serve' && process.argv.includes('--rpc') ? ['echo'] : [], task_types: [] },
    capabilities_revision: REVISION
  }
  if (auth) body.auth = auth
  return body
}

async function hello (node, client, remoteId) {
  let nonce = null
  let auth = null
  if (secret) {
    nonce = randomBytes(16).toString('hex')
    auth = { nonce, proof: mac(secret, 'hello', node.peerId.toString(), remoteId, nonce) }
  }
  const reply = await client.request('hello', helloBody(node, auth))
  let proven = null
  if (secret && reply.k === 'res') {
    const answer = reply.r.auth
    proven = Boolean(answer) && answer.proof === mac(secret, 'reply', remoteId, node.peerId.toString(), nonce, answer.nonce)
  }
  return { reply, proven }
}

// -- serving the protocol ---------------------------------------------------------------------------------------------
function serveRpc (node) {
  const members = new Set()
  const introduced = new Set()
  node.handle(PROTOCOL, async (stream, connection) => {
    const peer = connection.remotePeer.toString()
    emit('rpc_stream', { peer })
    const reader = new FrameReader()
    try {
      for await (const chunk of stream) {
        for (const message of reader.feed(chunk)) {
          stream.send(frame(answer(peer, message)))
        }
      }
    } catch (err) {
      emit('rpc_stream_error', { peer, error: String(err) })
    }
  }, { maxInboundStreams: 64 })

  function error (id, code, message, data) {
    const e = { code, message }
    if (data !== undefined) e.data = data
    return { v: 1, k: 'err', id, e }
  }

  function answer (peer, message) {
    const { id, op, a: args = {} } = message
    if (message.v !== 1) return error(id, 'version_mismatch', 'v must be 1')
    if (message.k !== 'req' || typeof op !== 'string') return error(id, 'bad_frame', 'not a request')
    emit('rpc_request', { peer, op })
    if (op === 'hello') {
      if (args.wire_version !== 1) return error(id, 'version_mismatch', 'wire_version must be 1')
      introduced.add(peer)
      const body = helloBody(node, null)
      if (secret) {
        const auth = args.auth
        const good = auth && typeof auth.nonce === 'string' &&
          auth.proof === mac(secret, 'hello', peer, node.peerId.toString(), auth.nonce)
        if (good) {
          members.add(peer)
          const ours = randomBytes(16).toString('hex')
          body.auth = { nonce: ours, proof: mac(secret, 'reply', node.peerId.toString(), peer, auth.nonce, ours) }
        } else {
          members.delete(peer)
          body.capabilities = { tools: [], task_types: [] }
        }
      }
      return { v: 1, k: 'res', id, r: body }
    }
    if (secret && op !== 'ping' && !members.has(peer)) {
      return error(id, 'forbidden', `peer ${peer} has not proven this network's secret`, { reason: 'no_secret_proof' })
    }
    if (!introduced.has(peer)) return error(id, 'unavailable', 'say hello first', { hello_required: true })
    if (op === 'ping') return { v: 1, k: 'res', id, r: { capabilities_revision: REVISION } }
    if (op === 'peers') return { v: 1, k: 'res', id, r: { peers: [] } }
    if (op === 'call_tool') {
      if (args.tool !== 'echo') return error(id, 'forbidden', `this node does not serve ${args.tool}`, { served_tools: ['echo'] })
      const text = String((args.args || {}).message)
      emit('tool_called', { peer, tool: 'echo' })
      return { v: 1, k: 'res', id, r: { message: text, echo: text, served_by: 'js-libp2p' } }
    }
    return error(id, 'unknown_tool', `unknown op ${op}`, { ops: ['call_tool', 'hello', 'peers', 'ping'] })
  }
}

// -- the modes --------------------------------------------------------------------------------------------------------
const mode = process.argv[2]

async function start (listen) {
  const node = await createLibp2p({
    addresses: { listen: listen ? ['/ip4/127.0.0.1/tcp/0'] : [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping() }
  })
  node.addEventListener('peer:connect', (event) => emit('peer_connect', { peer: event.detail.toString() }))
  node.addEventListener('peer:disconnect', (event) => emit('peer_disconnect', { peer: event.detail.toString() }))
  return node
}

function waitForEnd (node) {
  return new Promise((resolve) => {
    const stop = async () => { await node.stop(); resolve() }
    process.on('SIGTERM', stop)
    process.stdin.on('end', stop)
    process.stdin.resume()
  })
}

async function client (target) {
  const node = await start(false)
  const remote = multiaddr(target)
  const remoteId = remote.getComponents().find((c) => c.name === 'p2p').value
  const connection = await node.dial(remote)
  emit('connected', { peer: remoteId, encryption: connection.encryption, multiplexer: connection.multiplexer })
  const rtt = await node.services.ping.ping(connection.remotePeer)
  emit('libp2p_ping', { rtt_ms: rtt })
  let protocols = []
  for (let i = 0; i < 50 && !protocols.includes(PROTOCOL); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    try { protocols = (await node.peerStore.get(connection.remotePeer)).protocols } catch { protocols = [] }
  }
  emit('identify', { protocols })
  const stream = await node.dialProtocol(connection.remotePeer, PROTOCOL)
  const rpc = new RpcClient(stream)
  // before hello: every op but hello wants one (or, in a closed network, a proof)
  emit('reply', { op: 'ping-before-hello', reply: await rpc.request('ping') })
  const { reply, proven } = await hello(node, rpc, remoteId)
  emit('reply', { op: 'hello', reply, proven })
  emit('reply', { op: 'ping', reply: await rpc.request('ping') })
  emit('reply', { op: 'peers', reply: await rpc.request('peers') })
  const tool = option('--tool')
  if (tool) {
    const args = JSON.parse(option('--args', '{}'))
    emit('reply', { op: 'call_tool', reply: await rpc.request('call_tool', { tool, args }, 20000) })
    const data = args.data ?? ''
    emit('expected_digest', { digest: createHash('sha256').update(Buffer.from(data, 'utf-8')).digest('hex') })
  }
  emit('reply', { op: 'queue.claim', reply: await rpc.request('queue.claim', { worker: 'js', boot: 'js-boot', types: ['echo'], max: 1 }) })
  emit('reply', { op: 'queue.hint', reply: await rpc.request('queue.hint', { types: ['echo'] }) })
  const report = { task_id: 'not-a-task', attempt: 1, ok: true, result: 'forged' }
  emit('reply', { op: 'queue.complete', reply: await rpc.request('queue.complete', { reports: [report] }) })
  emit('reply', { op: 'no.such.op', reply: await rpc.request('no.such.op') })
  emit('reply', { op: 'missing-op', reply: await rpc.sendRaw({ v: 1, k: 'req', id: 99, t: 1000 }) })
  emit('reply', { op: 'bad-version', reply: await rpc.sendRaw({ v: 2, k: 'req', id: 100, op: 'ping', t: 1000 }) })
  emit('reply', { op: 'bad-hello', reply: await rpc.request('hello', { wire_version: 2 }) })
  await stream.close()
  await node.stop()
  emit('done')
}

async function clientOnly (target) {
  const node = await start(false)
  const remote = multiaddr(target)
  const remoteId = remote.getComponents().find((c) => c.name === 'p2p').value
  const connection = await node.dial(remote)
  const stream = await node.dialProtocol(connection.remotePeer, PROTOCOL)
  const rpc = new RpcClient(stream)
  const { reply, proven } = await hello(node, rpc, remoteId)
  emit('reply', { op: 'hello', reply, proven })
  const seconds = Number(option('--seconds', '30'))
  const until = Date.now() + seconds * 1000
  let ok = 0
  let failed = 0
  while (Date.now() < until) {
    const answer = await rpc.request('ping')
    if (answer.k === 'res') ok++; else failed++
    await new Promise((resolve) => setTimeout(resolve, 5000))
  }
  emit('pings', { ok, failed, connected: node.getConnections(connection.remotePeer).length > 0 })
  await node.stop()
  emit('done')
}

async function pushResets (target) {
  const node = await start(false)
  const connection = await node.dial(multiaddr(target))
  const count = Number(option('--count', '300'))
  let opened = 0
  let refused = 0
  for (let i = 0; i < count; i++) {
    try {
      const stream = await connection.newStream('/ipfs/id/push/1.0.0')
      opened++
      stream.abort(new Error('reset on purpose'))
    } catch {
      refused++
    }
  }
  emit('push_resets', { opened, refused })
  await node.stop()
  emit('done')
}

async function serve () {
  const node = await start(true)
  if (process.argv.includes('--rpc')) serveRpc(node)
  emit('listening', { peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String), rpc: process.argv.includes('--rpc') })
  const target = option('--dial')
  if (target) {
    await node.dial(multiaddr(target))
    emit('dialled', { target })
  }
  await waitForEnd(node)
  emit('stopped')
}

const run = {
  client: () => client(process.argv[3]),
  'client-only': () => clientOnly(process.argv[3]),
  'push-resets': () => pushResets(process.argv[3]),
  serve
}[mode]
if (!run) {
  process.stderr.write('usage: node peer.mjs client TARGET | client-only TARGET | serve [--rpc] [--dial TARGET]\n')
  process.exit(2)
}
run().then(() => process.exit(0), (err) => { emit('error', { error: String(err && err.stack || err) }); process.exit(1) })
