;; Lattice Edge demo actor: a hand-written waPC guest (import module "wapc").
;;
;; Operations:
;;   Echo    payload P -> P
;;   Greet   payload P -> "Hello, P!"  (and logs the same line through __console_log)
;;   Health  any       -> msgpack {"healthy": true}
;;   Random  payload P -> host_call("default", "wasmcloud:builtin:numbergen",
;;                        "NumberGen.Random32", P); returns the host's response unchanged,
;;                        or guest error "host error: <message>" when the host call fails
;;   other   -> guest error "unknown operation <op>"
;;
;; Plain WebAssembly 1.0 (no bulk memory, no reference types) so wasm3 0.5 runs it.
;; Built and signed by tests/fixtures/build_guests.py with the public demo issuer key.
;;
;; Memory map: 0..511 constant strings, 1024.. the operation name, then the payload
;; (16-byte aligned), then scratch space for the response; memory grows as needed.
(module
  (import "wapc" "__guest_request"     (func $guest_request (param i32 i32)))
  (import "wapc" "__guest_response"    (func $guest_response (param i32 i32)))
  (import "wapc" "__guest_error"       (func $guest_error (param i32 i32)))
  (import "wapc" "__host_call"
    (func $host_call (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wapc" "__host_response_len" (func $host_response_len (result i32)))
  (import "wapc" "__host_response"     (func $host_response (param i32)))
  (import "wapc" "__host_error_len"    (func $host_error_len (result i32)))
  (import "wapc" "__host_error"        (func $host_error (param i32)))
  (import "wapc" "__console_log"       (func $console_log (param i32 i32)))

  (memory (export "memory") 1 16)

  (data (i32.const 0)   "Echo")                          ;; 4
  (data (i32.const 16)  "Greet")                         ;; 5
  (data (i32.const 32)  "Health")                        ;; 6
  (data (i32.const 48)  "Random")                        ;; 6
  (data (i32.const 64)  "Hello, ")                       ;; 7
  (data (i32.const 80)  "\81\a7healthy\c3")              ;; 10: msgpack {"healthy": true}
  (data (i32.const 96)  "default")                       ;; 7
  (data (i32.const 112) "wasmcloud:builtin:numbergen")   ;; 27
  (data (i32.const 144) "NumberGen.Random32")            ;; 18
  (data (i32.const 176) "unknown operation ")            ;; 18
  (data (i32.const 208) "host error: ")                  ;; 12

  ;; grow linear memory so that [0, end) is addressable; trap when the host refuses
  (func $ensure (param $end i32)
    (local $need i32)
    (local.set $need
      (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
               (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $need)) (i32.const -1))
          (then unreachable)))))

  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))

  ;; 1 when the n bytes at a equal the m bytes at b
  (func $equal (param $a i32) (param $n i32) (param $b i32) (param $m i32) (result i32)
    (if (i32.ne (local.get $n) (local.get $m)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b)))
          (then (return (i32.const 0))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  (func (export "__guest_call") (param $op_len i32) (param $pl_len i32) (result i32)
    (local $op i32) (local $pl i32) (local $out i32) (local $len i32)
    (local.set $op (i32.const 1024))
    (local.set $pl (i32.add (i32.const 1024)
                            (i32.and (i32.add (local.get $op_len) (i32.const 15)) (i32.const -16))))
    (local.set $out (i32.add (local.get $pl) (local.get $pl_len)))
    (call $ensure (local.get $out))
    (call $guest_request (local.get $op) (local.get $pl))

    (if (call $equal (local.get $op) (local.get $op_len) (i32.const 0) (i32.const 4))
      (then
        (call $guest_response (local.get $pl) (local.get $pl_len))
        (return (i32.const 1))))

    (if (call $equal (local.get $op) (local.get $op_len) (i32.const 16) (i32.const 5))
      (then
        (local.set $len (i32.add (local.get $pl_len) (i32.const 8)))
        (call $ensure (i32.add (local.get $out) (local.get $len)))
        (call $copy (local.get $out) (i32.const 64) (i32.const 7))
        (call $copy (i32.add (local.get $out) (i32.const 7)) (local.get $pl) (local.get $pl_len))
        (i32.store8 (i32.add (local.get $out) (i32.add (local.get $pl_len) (i32.const 7)))
                    (i32.const 33))                     ;; '!'
        (call $console_log (local.get $out) (local.get $len))
        (call $guest_response (local.get $out) (local.get $len))
        (return (i32.const 1))))

    (if (call $equal (local.get $op) (local.get $op_len) (i32.const 32) (i32.const 6))
      (then
        (call $guest_response (i32.const 80) (i32.const 10))
        (return (i32.const 1))))

    (if (call $equal (local.get $op) (local.get $op_len) (i32.const 48) (i32.const 6))
      (then
        (if (call $host_call (i32.const 96) (i32.const 7) (i32.const 112) (i32.const 27)
                             (i32.const 144) (i32.const 18) (local.get $pl) (local.get $pl_len))
          (then
            (local.set $len (call $host_response_len))
            (call $ensure (i32.add (local.get $out) (local.get $len)))
            (call $host_response (local.get $out))
            (call $guest_response (local.get $out) (local.get $len))
            (return (i32.const 1))))
        (local.set $len (call $host_error_len))
        (call $ensure (i32.add (local.get $out) (i32.add (local.get $len) (i32.const 12))))
        (call $copy (local.get $out) (i32.const 208) (i32.const 12))
        (call $host_error (i32.add (local.get $out) (i32.const 12)))
        (call $guest_error (local.get $out) (i32.add (local.get $len) (i32.const 12)))
        (return (i32.const 0))))

    (call $ensure (i32.add (local.get $out) (i32.add (local.get $op_len) (i32.const 18))))
    (call $copy (local.get $out) (i32.const 176) (i32.const 18))
    (call $copy (i32.add (local.get $out) (i32.const 18)) (local.get $op) (local.get $op_len))
    (call $guest_error (local.get $out) (i32.add (local.get $op_len) (i32.const 18)))
    (i32.const 0))
)
