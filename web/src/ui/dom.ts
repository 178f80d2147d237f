/**
 * A few DOM helpers. Text always goes in through textContent (text nodes), never
 * innerHTML: names, rooms and messages come from other people.
 */

export type Child = Node | string | null | undefined | false;

export interface Attrs {
  [name: string]: string | boolean | number | undefined | ((ev: Event) => void);
}

/** Makes an element: attributes by setAttribute (`on*` ones become listeners), children as nodes or text. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "class") {
      el.className = String(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el: Element, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
}

/** Replaces every child of `el`. */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, ...children);
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`no element #${id}`);
  return el as T;
}

export function localTime(t: Date): string {
  return t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
