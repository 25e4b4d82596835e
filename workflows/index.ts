/** Every workflow the `arch` task queue runs; the bundle's entry point. */
export {};
