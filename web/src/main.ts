/** Entry point of the browser client (bundled to dist/app.js). */
import { startApp } from "./ui/app.js";

const root = document.getElementById("app");
if (root) void startApp(root);
