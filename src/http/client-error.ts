// What a sidecar answers when node's HTTP parser refuses a request (a smuggling attempt with
// both Content-Length and Transfer-Encoding, headers over the limit, headers too slow, garbage):
// the status node would send, then the connection closes. Every refusal is counted.
import type { Socket } from "node:net";
import type { Counter } from "prom-client";

export function answerClientError(err: NodeJS.ErrnoException, socket: Socket, refused: Counter<"kind">): void {
  refused.labels("http_parse").inc();
  if (!socket.writable) return void socket.destroy();
  const status = err.code === "HPE_HEADER_OVERFLOW" ? "431 Request Header Fields Too Large" : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? "408 Request Timeout" : "400 Bad Request";
  socket.end(`HTTP/1.1 ${status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
}
