// The errors a native app can tell apart (instanceof, or `code` across package copies).
import type { StreamFailure } from "../outbound/concrete.js";

/** A URL or name that does not name a mesh service, with what to write instead. */
export class MeshNameError extends Error {
  readonly code = "MESH_BAD_NAME";
  constructor(message: string) {
    super(message);
    this.name = "MeshNameError";
  }
}

/** No host could take the request (Envoy's UH): every instance unhealthy, ejected or absent. */
export class NoHealthyUpstreamError extends Error {
  readonly code = "MESH_NO_HEALTHY_UPSTREAM";
  constructor(message: string) {
    super(message);
    this.name = "NoHealthyUpstreamError";
  }
}

/** Why a dial failed: Envoy's response flag (UH no healthy host, UO breaker open, UF every connect failed) and what happened. */
export class DialError extends Error {
  readonly code = "MESH_DIAL_FAILED";
  constructor(
    readonly flag: StreamFailure["flag"],
    message: string,
  ) {
    super(message);
    this.name = "DialError";
  }
}
