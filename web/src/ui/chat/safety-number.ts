/**
 * The one safety number open at a time, shared by the members panel and the key-change
 * banners so that both show the same comparison.
 */
import type { ChatClient } from "../../chat/index.js";

export class OpenSafetyNumber {
  user: string | null = null;
  text = "";

  constructor(private readonly client: ChatClient) {}

  async open(user: string, failure: (e: unknown) => string): Promise<void> {
    try {
      this.text = await this.client.safetyNumber(user);
    } catch (e) {
      this.text = failure(e);
    }
    this.user = user;
  }

  close(): void {
    this.user = null;
  }
}
