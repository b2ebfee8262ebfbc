// Lint: typescript-eslint's type-aware rules, strict about promises (a floating promise or a
// swallowed rejection in a proxy is a silent failure at 3 a.m.).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "bench/", "examples/", "**/*.js", "**/*.mjs"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: ["./tsconfig.json", "./tsconfig.test.json"], tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": ["error", { ignoreVoid: false }],
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/promise-function-async": "off",
      "@typescript-eslint/prefer-promise-reject-errors": "error",
      "@typescript-eslint/only-throw-error": "error",
      "@typescript-eslint/use-unknown-in-catch-callback-variable": "error",
      "@typescript-eslint/return-await": ["error", "in-try-catch"],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
      // A rejection handled by doing nothing must say why: `.catch(() => {})` is refused.
      "no-restricted-syntax": [
        "error",
        {
          selector: "CallExpression[callee.property.name='catch'] > ArrowFunctionExpression[body.type='BlockStatement'][body.body.length=0]",
          message: "A swallowed rejection: log or count it, or comment on why it cannot matter (ignoreRejection(reason)).",
        },
        {
          selector: "CallExpression[callee.property.name='catch'] > FunctionExpression[body.body.length=0]",
          message: "A swallowed rejection: log or count it, or comment on why it cannot matter (ignoreRejection(reason)).",
        },
      ],
    },
  },
  {
    // tap's t.test() returns a promise that tap itself awaits (subtests run in order); an async
    // test callback without an await is tap's normal shape.
    files: ["test/**/*.ts"],
    rules: {
      "@typescript-eslint/no-floating-promises": [
        "error",
        { ignoreVoid: false, allowForKnownSafePromises: [{ from: "package", name: "PromiseWithSubtest", package: "@tapjs/core" }] },
      ],
      "@typescript-eslint/require-await": "off",
    },
  },
);
