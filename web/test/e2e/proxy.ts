/**
 * A hostile network between one browser and the relay, for the browser tests: an HTTP/1.1
 * reverse proxy on loopback that passes everything through (the page, gRPC-Web calls,
 * the OpenSession stream) and, when told to, rewrites what the relay sends, frame by
 * frame, the way a compromised relay or network could:
 * - `tamperFrom`: flips one byte of the ciphertext of every message delivered from
 *   these senders;
 * - `offline`: cuts every connection, as a network going away would;
 * - `swap`: presents another identity (made here, genuinely signed, under the same
 *   user name) for a user, in Joined/MemberJoined/History and in KeyExchange answers.
 * The browser loads the page from the proxy, so its origin (and the CSP's 'self') is the
 * proxy. Bundled by lib.mjs with esbuild (it uses the generated stubs and the library).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  KeyBundleSchema, KeyExchangeResponseSchema, ServerFrameSchema,
  type KeyBundle, type PublicIdentity,
} from "../../src/gen/chat/v2/chat_pb.js";
import { Identity } from "../../src/chat/crypto/identity.js";
import { PrekeyStore } from "../../src/chat/crypto/prekeys.js";
import { MemoryVault } from "../../src/chat/vault.js";

export interface Proxy {
  url: string;
  tamperFrom: Set<string>;
  tampered: number;
  /** Replaces `user`'s identity (and prekey) with a freshly made one under the same name. */
  swapIdentityOf(user: string): Promise<void>;
  swapped: number;
  /** While true, every connection is cut at once: the browser is offline. */
  offline: boolean;
  /** Cuts every open connection (the session stream included). */
  dropConnections(): void;
  close(): Promise<void>;
}

const SESSION = "/chat.v2.ChatService/OpenSession";
const KEY_EXCHANGE = "/chat.v2.ChatService/KeyExchange";

export async function startProxy(target: string): Promise<Proxy> {
  const upstream = new URL(target);
  let fake: { user: string; identity: PublicIdentity; bundle: KeyBundle } | null = null;

  const swapIdentity = (id: PublicIdentity | undefined): PublicIdentity | undefined => {
    if (fake && id?.user === fake.user) {
      state.swapped++;
      return fake.identity;
    }
    return id;
  };

  const rewriteFrame = (payload: Uint8Array): Uint8Array => {
    const frame = fromBinary(ServerFrameSchema, payload);
    const k = frame.kind;
    let changed = false;
    if (k.case === "message" && state.tamperFrom.has(k.value.sender) && k.value.sealed?.ciphertext.length) {
      const c = k.value.sealed.ciphertext;
      c[c.length >> 1] ^= 0x01;
      state.tampered++;
      changed = true;
    } else if (fake && k.case === "joined") {
      k.value.members = k.value.members.map((m) => swapIdentity(m)!);
      k.value.formerMembers = k.value.formerMembers.map((m) => swapIdentity(m)!);
      changed = true;
    } else if (fake && k.case === "memberJoined") {
      k.value.member = swapIdentity(k.value.member);
      changed = true;
    } else if (fake && k.case === "history") {
      k.value.formerMembers = k.value.formerMembers.map((m) => swapIdentity(m)!);
      changed = true;
    }
    return changed ? toBinary(ServerFrameSchema, frame) : payload;
  };

  const rewriteKeyExchange = (payload: Uint8Array): Uint8Array => {
    if (!fake) return payload;
    const answer = fromBinary(KeyExchangeResponseSchema, payload);
    answer.bundles = answer.bundles.map((b) => {
      if (b.identity?.user !== fake!.user) return b;
      state.swapped++;
      return fake!.bundle;
    });
    return toBinary(KeyExchangeResponseSchema, answer);
  };

  const server = http.createServer((req, res) => {
    if (state.offline) {
      req.socket.destroy();
      return;
    }
    const path = (req.url ?? "/").split("?")[0];
    const rewrite = path === SESSION ? rewriteFrame : path === KEY_EXCHANGE ? rewriteKeyExchange : null;
    const up = http.request({
      hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers,
    }, (upRes) => {
      if (!rewrite) {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
        return;
      }
      const headers = { ...upRes.headers };
      delete headers["content-length"];
      res.writeHead(upRes.statusCode ?? 502, headers);
      res.flushHeaders();
      let pending = Buffer.alloc(0);
      upRes.on("data", (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= 5) {
          const length = pending.readUInt32BE(1);
          if (pending.length < 5 + length) break;
          const flags = pending[0]!;
          let body: Uint8Array = new Uint8Array(pending.subarray(5, 5 + length));
          pending = pending.subarray(5 + length);
          if ((flags & 0x80) === 0) {
            try {
              body = rewrite(body);
            } catch (e) {
              console.error("proxy: cannot rewrite a frame", e);
            }
          }
          const head = Buffer.alloc(5);
          head[0] = flags;
          head.writeUInt32BE(body.length, 1);
          res.write(Buffer.concat([head, body]));
        }
      });
      upRes.on("end", () => res.end());
      upRes.on("error", () => res.destroy());
    });
    up.on("error", () => res.destroy());
    req.pipe(up);
    res.on("close", () => up.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;

  const state: Proxy = {
    url: `http://127.0.0.1:${port}`,
    tamperFrom: new Set(),
    tampered: 0,
    swapped: 0,
    offline: false,
    dropConnections: () => server.closeAllConnections(),
    async swapIdentityOf(user: string) {
      const identity = await Identity.generate(user, 2048);
      const prekeys = await PrekeyStore.open(new MemoryVault(), identity, 2048);
      await prekeys.maintain();
      const prekey = await prekeys.signedCurrent();
      const pub = identity.publicIdentity();
      fake = { user, identity: pub, bundle: create(KeyBundleSchema, { identity: pub, device: prekey.device, prekey }) };
    },
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
  return state;
}
