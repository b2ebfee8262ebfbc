// The heap that survived the last full garbage collection. nodejs_heap_size_used_bytes is read
// at scrape time and counts garbage not yet collected: under load it swings by tens of MB
// between two scrapes, so a leak cannot be told from a scrape that landed before a GC (the
// session-9 hour soak flagged web's heap on exactly that). Right after a mark-sweep-compact the
// old generation holds only what is reachable; the young generation is left out because it is
// mostly garbage again by the time the GC's entry is delivered.
import { PerformanceObserver, constants } from "node:perf_hooks";
import { getHeapSpaceStatistics } from "node:v8";
import { Gauge, type Registry } from "./prom.js";

/** Heap used outside the young generation, now: after a full GC, the reachable heap. */
function heapUsedOutsideYoung(): number {
  let bytes = 0;
  for (const space of getHeapSpaceStatistics()) if (!space.space_name.startsWith("new_")) bytes += space.space_used_size;
  return bytes;
}

/**
 * meshproxy_heap_live_bytes: set at each full GC; 0 until the first one. Observing GC
 * entries costs one callback per GC (full GCs come seconds to minutes apart on a sidecar).
 */
export function registerHeapLive(registry: Registry): void {
  const gauge = new Gauge({
    name: "meshproxy_heap_live_bytes",
    help: "V8 heap in use outside the young generation just after the last full (mark-sweep-compact) GC: what survived it. A leak raises it; garbage does not",
    registers: [registry],
  });
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (isFullGc(entry)) {
        gauge.set(heapUsedOutsideYoung());
        return;
      }
    }
  });
  // A GC observer does not keep the event loop alive: nothing to stop when the proxy exits.
  observer.observe({ entryTypes: ["gc"] });
}

/** A gc entry's detail ({ kind, flags }) is Node's, not in the DOM-shaped PerformanceEntry type. */
function isFullGc(entry: object): boolean {
  if (!("detail" in entry)) return false;
  const detail = entry.detail;
  return typeof detail === "object" && detail !== null && "kind" in detail && detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR;
}
