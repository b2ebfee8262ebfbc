// The part of @grpc/grpc-js (≥ 1.14) the native library uses, described structurally. The app
// passes its own `grpc` module in: the library never imports grpc-js (it is not a dependency),
// and the credentials and servers it builds are made from the app's copy, because grpc-js
// checks `instanceof` against its own classes.
import type { Duplex } from "node:stream";
import type { Socket } from "node:net";

/** Request metadata as a handler receives it (`call.metadata`). */
export interface GrpcMetadata {
  get(key: string): Array<string | Buffer>;
}

export interface GrpcConnectionInfo {
  localAddress?: string | undefined;
  localPort?: number | undefined;
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
}

/** A server call as an interceptor sees it. */
export interface GrpcServerCall {
  sendStatus(status: { code: number; details: string }): void;
  getConnectionInfo(): GrpcConnectionInfo;
}

export interface GrpcServerListener<Meta extends GrpcMetadata> {
  onReceiveMetadata(metadata: Meta, next: (metadata: Meta) => void): void;
}

export interface GrpcResponder<Meta extends GrpcMetadata> {
  start(next: (listener: GrpcServerListener<Meta>) => void): void;
}

export interface GrpcMethodDescriptor {
  readonly path: string;
}

export type GrpcServerInterceptor<Call, Intercepting> = (method: GrpcMethodDescriptor, call: Call) => Intercepting;

/** Opaque to the library: made by one grpc-js function and handed to another. */
export type GrpcServerCredentials = object;

export interface GrpcConnectionInjector {
  injectConnection(connection: Duplex): void;
  destroy(): void;
}

/** A grpc-js `Server`, with its services added by the app. */
export interface GrpcServer {
  createConnectionInjector(credentials: GrpcServerCredentials): GrpcConnectionInjector;
}

export interface GrpcEndpoint {
  addresses: Array<{ host: string; port: number }>;
}

export interface GrpcServiceConfig {
  loadBalancingConfig: Array<{ round_robin: Record<string, never> }>;
  methodConfig: [];
}

export interface GrpcStatusObject<Meta> {
  code: number;
  details: string;
  metadata: Meta;
}

export type GrpcStatusOr<T, Meta> = { ok: true; value: T } | { ok: false; error: GrpcStatusObject<Meta> };

export type GrpcResolverListener<Meta> = (
  endpoints: GrpcStatusOr<GrpcEndpoint[], Meta>,
  attributes: Record<string, unknown>,
  serviceConfig: GrpcStatusOr<GrpcServiceConfig, Meta> | null,
  resolutionNote: string,
) => boolean;

export interface GrpcUri {
  scheme?: string | undefined;
  authority?: string | undefined;
  path: string;
}

export interface GrpcResolver {
  updateResolution(): void;
  destroy(): void;
}

export interface GrpcResolverConstructor<Meta> {
  new (target: GrpcUri, listener: GrpcResolverListener<Meta>, options: object): GrpcResolver;
  getDefaultAuthority(target: GrpcUri): string;
}

export interface GrpcSecureConnector<CallCreds> {
  connect(socket: Socket): Promise<{ socket: Socket; secure: boolean }>;
  waitForReady(): Promise<void>;
  getCallCredentials(): CallCreds;
  destroy(): void;
}

/** grpc-js's abstract ChannelCredentials: what a subclass implements, and what it inherits. */
export interface GrpcChannelCredentials<CallCreds> {
  compose(callCredentials: CallCreds): GrpcChannelCredentials<CallCreds>;
  _isSecure(): boolean;
  _equals(other: GrpcChannelCredentials<CallCreds>): boolean;
  _createSecureConnector(target: GrpcUri, options: object, callCredentials?: CallCreds): GrpcSecureConnector<CallCreds>;
}

/**
 * The app's `import * as grpc from "@grpc/grpc-js"`. `Call` is grpc-js's own server call type,
 * inferred from the module passed in: an interceptor hands grpc-js's call back to grpc-js.
 */
export interface GrpcModule<Call extends GrpcServerCall, Meta extends GrpcMetadata, Intercepting, CallCreds> {
  readonly ServerCredentials: { createInsecure(): GrpcServerCredentials };
  readonly ServerInterceptingCall: new (call: Call, responder?: GrpcResponder<Meta>) => Intercepting;
  readonly ChannelCredentials: abstract new () => GrpcChannelCredentials<CallCreds>;
  readonly CallCredentials: { createEmpty(): CallCreds };
  readonly Metadata: new () => Meta;
  readonly experimental: {
    createServerCredentialsWithInterceptors(credentials: GrpcServerCredentials, interceptors: Array<GrpcServerInterceptor<Call, Intercepting>>): GrpcServerCredentials;
    registerResolver(scheme: string, resolver: GrpcResolverConstructor<Meta>): void;
  };
}
