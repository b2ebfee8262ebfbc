// Where a JSON document broke, in the terms an editor shows: V8's errors give a character
// position for most mistakes, none for an unexpected token (`{"a": yes}`) or a truncated file;
// people look for a line and a column.

/** The parse error's message, with `; line L column C` added. */
export function jsonErrorWhere(text: string, e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const m = /at position (\d+)/.exec(msg);
  const pos = m ? Number(m[1]) : firstSyntaxError(text);
  if (pos < 0) return msg;
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  const col = pos - before.lastIndexOf("\n");
  return `${msg}; line ${line} column ${col}`;
}

/**
 * The offset of the first character JSON's grammar does not allow (text.length when the text
 * ends too early), or -1 when it is valid. Iterative, so deep nesting cannot overflow the stack.
 */
export function firstSyntaxError(text: string): number {
  let i = 0;
  const stack: Array<"{" | "["> = [];
  const ws = () => {
    while (i < text.length && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++;
  };
  const literal = (word: string): boolean => {
    if (!text.startsWith(word, i)) return false;
    i += word.length;
    return true;
  };
  const string = (): boolean => {
    if (text[i] !== '"') return false;
    i++;
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return true;
      }
      if (c < 0x20) return false;
      if (c === 0x5c) {
        const n = text[i + 1];
        if (n === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) return false;
          i += 6;
        } else if (n !== undefined && '"\\/bfnrt'.includes(n)) i += 2;
        else return false;
      } else i++;
    }
    return false;
  };
  const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
  const value = (): boolean => {
    const c = text[i];
    if (c === '"') return string();
    if (c === "t") return literal("true");
    if (c === "f") return literal("false");
    if (c === "n") return literal("null");
    NUMBER.lastIndex = i;
    if (NUMBER.exec(text)) {
      i = NUMBER.lastIndex;
      return true;
    }
    return false;
  };
  ws();
  for (;;) {
    // At the start of a value.
    ws();
    if (text[i] === "{") {
      i++;
      ws();
      if (text[i] === "}") i++;
      else {
        stack.push("{");
        if (!string()) return i;
        ws();
        if (text[i] !== ":") return i;
        i++;
        continue;
      }
    } else if (text[i] === "[") {
      i++;
      ws();
      if (text[i] === "]") i++;
      else {
        stack.push("[");
        continue;
      }
    } else if (!value()) return i;
    // After a value: a separator, a closing bracket, or the end.
    for (;;) {
      ws();
      const top = stack[stack.length - 1];
      if (top === undefined) return i === text.length ? -1 : i;
      if (text[i] === ",") {
        i++;
        ws();
        if (top === "{") {
          if (!string()) return i;
          ws();
          if (text[i] !== ":") return i;
          i++;
        }
        break;
      }
      if ((top === "{" && text[i] === "}") || (top === "[" && text[i] === "]")) {
        i++;
        stack.pop();
        continue;
      }
      return i;
    }
  }
}
