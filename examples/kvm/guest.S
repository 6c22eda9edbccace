# The guest program of examples/kvm: 32-bit protected mode, flat segments, no paging, no
# interrupts. Loaded at 0x1000; the VMM sets esi = vCPU id. Every answer is checked; a wrong
# one is reported with `out 0x500, eax` (eax = error code) and the loop goes on.
#
# Rebuild (binutils): scripts/build-guest.sh, which checks guest.bin matches this source.
#
# Guest-physical layout (the VMM's side is examples/kvm/vmm.rs):
#   0x00002000          mailbox: the BAR's current base (written by the control plane)
#   0x00003000 + 4*id   iterations done by vCPU `id` (read by the VMM)
#   0x00003400 + 4*id   BAR accesses that found the BAR moved away (retried next time)
#   0x000e0000          ROM, toggled between ROM and RAM; "ROM!" at offset 0
#   0x10000000          memory block, plugged and unplugged; "PLUG" at offset 0
#   0xfe000000, 0xfe001000  register files 0xA1 and 0xA2: reading offset o gives id<<24 | o
#   BAR (moving)        device 0xB0: reading address A gives 0xB0<<24 | (A>>20 & 0xfff)<<12 | (A & 0xfff)
#   port 0x510          identity port: reads 0xC0DE0510
#   port 0x3f8          UART data port (written)
#   port 0x500          error port
        .intel_syntax noprefix
        .code32
        .text
        .globl _start
_start:
        xor     ebx, ebx                        # iteration
next:
        # Register file 0xA1: read, check, write back (the device checks the value).
        mov     eax, ebx
        shl     eax, 2
        and     eax, 0xffc
        lea     edi, [eax + 0xfe000000]
        mov     edx, [edi]
        or      eax, 0xA1000000
        cmp     edx, eax
        jne     err_a1
        mov     [edi], eax
        # Register file 0xA2, the neighbour.
        mov     eax, ebx
        shl     eax, 2
        and     eax, 0xffc
        lea     edi, [eax + 0xfe001000]
        mov     edx, [edi]
        or      eax, 0xA2000000
        cmp     edx, eax
        jne     err_a2
        # Identity port and UART.
        mov     dx, 0x510
        in      eax, dx
        cmp     eax, 0xC0DE0510
        jne     err_port
        mov     dx, 0x3f8
        mov     al, bl
        out     dx, al
bar:
        # The moving BAR, at the base the mailbox gives.
        mov     edi, [0x2000]
        mov     eax, ebx
        shl     eax, 2
        and     eax, 0xffc
        add     edi, eax
        mov     edx, [edi]
        cmp     edx, 0xffffffff
        je      moved
        mov     eax, edi
        shr     eax, 20
        and     eax, 0xfff
        shl     eax, 12
        mov     ecx, edi
        and     ecx, 0xfff
        or      eax, ecx
        or      eax, 0xB0000000
        cmp     edx, eax
        jne     err_bar
        jmp     block
moved:
        inc     dword ptr [0x3400 + esi*4]
block:
        # The memory block: plugged (RAM, no exit) or unplugged (all ones).
        mov     edx, [0x10000000]
        cmp     edx, 0x47554C50                 # "PLUG"
        je      rom
        cmp     edx, 0xffffffff
        jne     err_block
rom:
        # The ROM: always readable; writes exit while it is ROM.
        mov     edx, [0xe0000]
        cmp     edx, 0x214D4F52                 # "ROM!"
        jne     err_rom
        mov     [0xe0100 + esi*4], ebx
        # Progress.
        inc     ebx
        mov     [0x3000 + esi*4], ebx
        jmp     next

err_a1:
        mov     eax, 1
        jmp     report
err_a2:
        mov     eax, 2
        jmp     report
err_port:
        mov     eax, 3
        jmp     report
err_bar:
        mov     eax, 4
        jmp     report
err_block:
        mov     eax, 5
        jmp     report
err_rom:
        mov     eax, 6
report:
        mov     dx, 0x500
        out     dx, eax
        inc     ebx
        jmp     next
