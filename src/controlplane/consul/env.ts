// The environment as Consul's CLI and api read it (api/api.go defaultConfig), without loading the
// agent client: the CLI and the control-plane selection read it before choosing an implementation.

/** Go's strconv.ParseBool, which Consul's api reads CONSUL_HTTP_SSL and CONSUL_HTTP_SSL_VERIFY with; null when not a boolean. */
export function goBool(v: string | undefined): boolean | null {
  if (v === undefined) return null;
  if (["1", "t", "T", "TRUE", "true", "True"].includes(v)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(v)) return false;
  return null;
}

/**
 * CONSUL_HTTP_SSL_VERIFY: any of Go's false forms (`false`, `0`, `f`, …) turns verification off,
 * as Consul's api does. Anything else keeps it on (Consul turns it off on a value it cannot
 * parse; a typo must not silently drop verification).
 */
export function sslVerifyFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return goBool(env["CONSUL_HTTP_SSL_VERIFY"]) !== false;
}

/**
 * Where the token an agent client sends came from, for the 403 message: the file when one was
 * read, else the variable or flag (a value equal to the environment's is taken to be from it).
 */
export function tokenSource(o: { token?: string | undefined; tokenFile?: string | undefined }, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (o.tokenFile) return `${o.tokenFile === env["CONSUL_HTTP_TOKEN_FILE"] ? "CONSUL_HTTP_TOKEN_FILE" : "-token-file"} ${o.tokenFile}`;
  if (o.token) return o.token === env["CONSUL_HTTP_TOKEN"] ? "CONSUL_HTTP_TOKEN" : "-token";
  return undefined;
}
