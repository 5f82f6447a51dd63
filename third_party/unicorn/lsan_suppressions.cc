// LeakSanitizer's suppressions for Unicorn (ASan builds only call this), linked into every binary
// that links Unicorn. Unicorn 2.1.1's bundled GLib keeps 32 bytes of each engine's unmapped-regions
// array (g_array_new in uc_init) after uc_close frees it: bounded (one per engine) and not ours to
// fix. And a code page the guest keeps writing to gets a write-tracking bitmap uc_close never frees
// (tb_invalidate_phys_page_fast; one per such page: Linux patches its own code while it boots).
extern "C" const char* __lsan_default_suppressions() {
  return "leak:g_array_new\nleak:tb_invalidate_phys_page_fast\n";
}
