/**
 * Where a client keeps what outlives a page (PROTOCOL.md, "A client's home directory",
 * for what is kept): behind the Vault interface, an in-memory store (tests) and an
 * IndexedDB store (browsers). Values are structured-cloned, so CryptoKeys stay
 * non-extractable; nothing secret ever goes to localStorage.
 */

export interface Vault {
  get<T>(key: string): Promise<T | undefined>;
  put(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
  /** Every key starting with `prefix`. */
  keys(prefix: string): Promise<string[]>;
}

export class MemoryVault implements Vault {
  private readonly data = new Map<string, unknown>();

  async get<T>(key: string): Promise<T | undefined> {
    const v = this.data.get(key);
    return v === undefined ? undefined : (structuredClone(v) as T);
  }

  async put(key: string, value: unknown): Promise<void> {
    this.data.set(key, structuredClone(value));
  }

  async delete(key: string): Promise<void> {
    this.data.delete(key);
  }

  async keys(prefix: string): Promise<string[]> {
    return [...this.data.keys()].filter((k) => k.startsWith(prefix)).sort();
  }
}

const STORE = "kv";

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export class IndexedDbVault implements Vault {
  private constructor(private readonly db: IDBDatabase) {}

  static async open(name = "e2ee-chat"): Promise<IndexedDbVault> {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    return new IndexedDbVault(await request(req));
  }

  private store(mode: IDBTransactionMode): IDBObjectStore {
    return this.db.transaction(STORE, mode).objectStore(STORE);
  }

  async get<T>(key: string): Promise<T | undefined> {
    return (await request(this.store("readonly").get(key))) as T | undefined;
  }

  async put(key: string, value: unknown): Promise<void> {
    const tx = this.db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(value, key);
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async delete(key: string): Promise<void> {
    const tx = this.db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).delete(key);
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }

  async keys(prefix: string): Promise<string[]> {
    const range = IDBKeyRange.bound(prefix, prefix + "\uffff");
    const keys = await request(this.store("readonly").getAllKeys(range));
    return keys.map(String).sort();
  }
}

/** The vault keys of one user's records. */
export const vaultKeys = {
  identity: (user: string) => `identity/${user}`,
  prekeys: (user: string) => `prekeys/${user}`,
  contacts: (user: string) => `contacts/${user}`,
  progress: (user: string) => `progress/${user}`,
  pending: (user: string) => `pending/${user}`,
  rooms: (user: string) => `rooms/${user}`,
};
